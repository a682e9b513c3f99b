"""PyKMIP's own integration suite (kmip/tests/integration of the pykmip source
distribution) against a running kcm-core, directly and through a kcm-gateway in front of it,
as PyKMIP's maintainers run it: pytest with ``-m "not ignore"`` (37 tests) and a ``[client]``
section in ~/.pykmip/pykmip.conf."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import kmip
import pytest

from kcm.pki import PkiPaths
from tests.e2e_support import CoreProcess, GatewayProcess
from tests.vectors import REPO_ROOT

CACHE = REPO_ROOT / ".cache"


def pykmip_integration_suite() -> Path:
    """The suite from PyPI's source distribution of the installed PyKMIP, cached in .cache/."""
    version = kmip.__version__
    target = CACHE / f"pykmip-{version}"
    suite = target / "kmip" / "tests" / "integration"
    if (target / "pytest.ini").is_file() and suite.is_dir():
        return target
    CACHE.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-binary", ":all:", f"pykmip=={version}", "-d", str(CACHE)],
                   check=True, timeout=300)
    with tarfile.open(CACHE / f"pykmip-{version}.tar.gz") as archive:
        members = [m for m in archive.getmembers()
                   if "/kmip/tests/integration/" in m.name + "/" and m.isfile()]
        archive.extractall(CACHE, members=members, filter="data")
    # Its own pytest configuration, so ours (strict markers) does not apply.
    (target / "pytest.ini").write_text("[pytest]\nmarkers =\n    ignore: not run by default\n")
    return target


def run_suite(port: int, pki: PkiPaths, home: Path) -> str:
    """Run the suite against the KMIP server on 127.0.0.1:``port`` as the PKI's application
    (its configuration in ``home``/.pykmip); the summary line, after asserting 37 passed."""
    source = pykmip_integration_suite()
    (home / ".pykmip").mkdir(parents=True)
    (home / ".pykmip" / "pykmip.conf").write_text(
        "[client]\n"
        "host=127.0.0.1\n"
        f"port={port}\n"
        f"certfile={pki.app.cert}\n"
        f"keyfile={pki.app.key}\n"
        f"ca_certs={pki.ca.cert}\n"
        "cert_reqs=CERT_REQUIRED\n"
        "ssl_version=PROTOCOL_SSLv23\n"
        "do_handshake_on_connect=True\n"
        "suppress_ragged_eofs=True\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "not ignore",
         "-q", "-W", "ignore::DeprecationWarning", "--rootdir", str(source),
         str(source / "kmip" / "tests" / "integration"), "--config", "client"],
        cwd=source, env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"\nPyKMIP integration suite: {summary}")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert re.search(r"\b37 passed\b", summary), summary
    return summary


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_pykmip_integration_suite_passes(core_process: CoreProcess, tmp_path: Path) -> None:
    run_suite(core_process.port, core_process.pki, tmp_path / "home")


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_pykmip_integration_suite_passes_through_kcm_gateway(
        gateway_process: GatewayProcess, tmp_path: Path) -> None:
    """The same suite against a kcm-gateway in front of the core: it creates, registers and
    manages managed objects (forwarded to the core), so it must pass exactly as it does
    against the core directly."""
    run_suite(gateway_process.port, gateway_process.pki, tmp_path / "home")
