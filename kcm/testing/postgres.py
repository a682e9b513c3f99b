"""A throw-away PostgreSQL cluster of Debian's binaries, for the tests and the benchmarks.

:func:`find_pg_bin` finds ``/usr/lib/postgresql/*/bin`` (or ``$KCM_PG_BIN``); a
:class:`Cluster` runs ``initdb`` and a server on a free 127.0.0.1 port from a private
temporary directory, its unix socket inside it, password authentication; its :attr:`url`
names database ``kcm``. PostgreSQL refuses to run as root, so under root the cluster belongs
to an unprivileged system user (``kcm-pg``, created if missing).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kcm.testing.processes import free_port

__all__ = ["DB_NAME", "DB_ROLE", "Cluster", "find_pg_bin", "fresh_database"]

PG_USER = "kcm-pg"
DB_NAME = "kcm"
DB_ROLE = "kcm"
_START_TIMEOUT_S = 60


def find_pg_bin() -> Path | None:
    """The newest PostgreSQL bin directory with initdb, pg_ctl and postgres, or None."""
    candidates = []
    if os.environ.get("KCM_PG_BIN"):
        candidates.append(Path(os.environ["KCM_PG_BIN"]))
    candidates += sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: _version_key(p.parent.name),
        reverse=True,
    )
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return candidate
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _traversable_tempdir() -> str:
    # The cluster's unprivileged owner must be able to reach its directory: a private
    # $TMPDIR (e.g. 0700 root) would make initdb fail with a puzzling permission error.
    base = Path(tempfile.gettempdir()).resolve()
    if os.geteuid() != 0:
        return str(base)
    for directory in (base, *base.parents):
        if not directory.stat().st_mode & stat.S_IXOTH:
            return "/tmp"
    return str(base)


def _ensure_pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                PG_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(PG_USER)


class Cluster:
    """One initdb'd data directory owned by an unprivileged user when run as root, and the
    commands to run against it: :meth:`init`, :meth:`start` (fsync and synchronous commit
    on, as in production), :meth:`create_database`, :meth:`stop`, :meth:`remove`."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.as_root = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="kcm-pg-", dir=_traversable_tempdir()))
        self.data = self.base / "data"
        self.socket_dir = self.base / "run"
        self.log = self.base / "server.log"
        self.password = secrets.token_hex(16)
        self.port = 0
        if self.as_root:
            user = _ensure_pg_user()
            os.chown(self.base, user.pw_uid, user.pw_gid)
        self.socket_dir.mkdir()
        if self.as_root:
            os.chown(self.socket_dir, user.pw_uid, user.pw_gid)

    def command(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", PG_USER, "--", *argv] if self.as_root else argv

    def run(self, tool: str, *args: str, timeout: float = _START_TIMEOUT_S) -> None:
        result = subprocess.run(
            self.command(tool, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                f"{self.server_log()}"
            )

    def server_log(self) -> str:
        with contextlib.suppress(OSError):
            return "server log:\n" + self.log.read_text(errors="replace")[-4000:]
        return ""

    def init(self) -> None:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_root:
            user = pwd.getpwnam(PG_USER)
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        pwfile.chmod(0o600)
        # --no-sync only skips initdb's own final flush of a throw-away directory; the server
        # itself runs with fsync on, like production.
        self.run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            DB_ROLE,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()

    def start(self) -> None:
        last_error: Exception | None = None
        # The free port can be taken between probing and binding: try a few.
        for _attempt in range(3):
            self.port = free_port()
            conf = (
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "fsync = on\n"
                "synchronous_commit = on\n"
                "max_connections = 40\n"
                "shared_buffers = 32MB\n"
                "dynamic_shared_memory_type = posix\n"
                "logging_collector = off\n"
            )
            (self.data / "postgresql.auto.conf").write_text(conf)
            try:
                self.run(
                    "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"
                )
                return
            except RuntimeError as exc:
                last_error = exc
        raise RuntimeError(f"could not start PostgreSQL: {last_error}")

    def create_database(self) -> None:
        self.run(
            "createdb", "-h", str(self.socket_dir), "-p", str(self.port), "-U", DB_ROLE, DB_NAME
        )

    def restart(self) -> None:
        """Stop the server (fast: sessions are terminated) and start it again on the same
        port, as a failover or a maintenance restart does to its clients."""
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{DB_ROLE}:{self.password}@127.0.0.1:{self.port}/{DB_NAME}"


@contextlib.contextmanager
def running_cluster(bin_dir: Path) -> Iterator[Cluster]:
    """A new cluster of ``bin_dir``'s binaries, started, its database ``kcm`` created
    (``cluster.url``); stopped and removed afterwards."""
    cluster = Cluster(bin_dir)
    try:
        cluster.init()
        cluster.start()
        try:
            cluster.create_database()
            yield cluster
        finally:
            cluster.stop()
    finally:
        cluster.remove()


def fresh_database(postgres_url: str, name: str) -> str:
    """The URL of a new, empty database ``name`` in the cluster of ``postgres_url``."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    finally:
        admin.dispose()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"
