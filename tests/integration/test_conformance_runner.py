"""The conformance runner end to end, against an independent server: PyKMIP's own.

PyKMIP 0.11's server runs as a subprocess on loopback with certificates from
:func:`kcm.pki.init_pki` (TLS 1.2, client certificates required) and a SQLite database in
``tmp_path``. It speaks KMIP 1.x only and implements a subset of the attributes, so many
cases fail; what is proven is that the runner talks to a real server over mutual TLS, binds
identifiers across steps, passes the cases that server does implement (SKFF-M-1..3-14: Create,
Get of server-generated key material, Destroy), fails the others with a reason, and prints
the documented format.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.cli import main
from kcm.pki import PkiPaths, init_pki
from kcm.testing.processes import free_port, start_pykmip, stop_process


@pytest.fixture
def pykmip_server(tmp_path: Path) -> Iterator[tuple[PkiPaths, int]]:
    """A running PyKMIP server and the PKI whose ``app`` certificate it accepts."""
    paths = init_pki(tmp_path / "pki")
    process, port = start_pykmip(paths, tmp_path)
    try:
        yield paths, port
    finally:
        # PyKMIP's server notices SIGTERM only once a connection wakes its accept(), 10 s
        # later: nothing of it is under test, so it is killed.
        stop_process(process, signal.SIGKILL)


_LINE = re.compile(r"(PASS [A-Z0-9-]+|FAIL [A-Z0-9-]+ step \d+: .+)\Z")


def test_runner_judges_pykmip_server(pykmip_server: tuple[PkiPaths, int], vectors: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    paths, port = pykmip_server
    status = main([
        "conformance", "run", "--host", "127.0.0.1", "--port", str(port),
        "--cert", str(paths.app.cert), "--key", str(paths.app.key), "--ca", str(paths.ca.cert),
        "--vectors", str(vectors), "--case", "SKLC-M-*-14", "--case", "SKFF-M-[123]-14",
    ])
    lines = capsys.readouterr().out.splitlines()
    verdicts = {line.split()[1]: line for line in lines[:-1]}
    assert set(verdicts) == {"SKLC-M-1-14", "SKLC-M-2-14", "SKFF-M-1-14", "SKFF-M-2-14",
                             "SKFF-M-3-14"}
    assert all(_LINE.match(line) for line in lines[:-1]), lines
    # PyKMIP implements Create, Get and Destroy of AES keys: these pass, with its own
    # identifiers and key material.
    for name in ("SKFF-M-1-14", "SKFF-M-2-14", "SKFF-M-3-14"):
        assert verdicts[name] == f"PASS {name}"
    # It does not keep a Digest attribute, which SKLC-M-1-14 asks for in step 2.
    assert verdicts["SKLC-M-1-14"].startswith("FAIL SKLC-M-1-14 step 2: ")
    assert "Digest" in verdicts["SKLC-M-1-14"]
    passed = sum(line.startswith("PASS") for line in lines[:-1])
    assert lines[-1] == f"{passed} passed, {len(lines) - 1 - passed} failed"
    assert status == 1


def test_runner_fails_cleanly_when_no_server_listens(tmp_path: Path, vectors: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    paths = init_pki(tmp_path / "pki")
    status = main([
        "conformance", "run", "--port", str(free_port()), "--cert", str(paths.app.cert),
        "--key", str(paths.app.key), "--ca", str(paths.ca.cert), "--vectors", str(vectors),
        "--case", "SKLC-M-1-14",
    ])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("FAIL SKLC-M-1-14 step 1: no response: cannot connect")
    assert lines[-1] == "0 passed, 1 failed"
    assert status == 1
