"""A PgBouncer in front of a test cluster (:class:`kcm.testing.postgres.Cluster`), in the pool
mode a test asks for, run as the cluster's owner (PgBouncer refuses root). Debian's
``pgbouncer`` package provides it (.ci/run installs it); where it is not installed the test
is skipped, and fails under ``$CI`` (the tests install nothing)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from kcm.testing.postgres import DB_NAME, DB_ROLE, PG_USER, Cluster
from kcm.testing.processes import free_port

__all__ = ["pgbouncer"]


def _binary() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if found is None:
        reason = "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
        if os.environ.get("CI"):
            pytest.fail(f"the pooler tests cannot run in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    return found


@contextlib.contextmanager
def pgbouncer(cluster: Cluster, mode: str) -> Iterator[str]:
    """A PgBouncer in ``mode`` (``session``, ``transaction``) before ``cluster``'s database
    ``kcm``: yields the SQLAlchemy URL of the database through it; stopped afterwards."""
    binary = _binary()
    work = cluster.base / f"pgbouncer-{mode}"
    work.mkdir()
    port = free_port()
    (work / "users.txt").write_text(f'"{DB_ROLE}" "{cluster.password}"\n')
    (work / "pgbouncer.ini").write_text(
        f"[databases]\n{DB_NAME} = host=127.0.0.1 port={cluster.port} dbname={DB_NAME}\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\n"
        f"listen_port = {port}\nunix_socket_dir =\nauth_type = scram-sha-256\n"
        f"auth_file = {work / 'users.txt'}\npool_mode = {mode}\ndefault_pool_size = 20\n"
        f"logfile = {work / 'pgbouncer.log'}\n")
    command = [binary, str(work / "pgbouncer.ini")]
    if cluster.as_root:
        owner = pwd.getpwnam(PG_USER)
        for path in (work, *work.iterdir()):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        command = ["runuser", "-u", PG_USER, "--", *command]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, "pgbouncer exited at start"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "pgbouncer did not listen"
                time.sleep(0.05)
        yield cluster.url.replace(f":{cluster.port}/", f":{port}/")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

