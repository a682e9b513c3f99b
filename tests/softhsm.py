"""A fresh SoftHSM2 token per test, in a temporary directory (test support).

The tests of L1 in a PKCS#11 token need Debian's ``softhsm2`` (``.ci/run`` installs it): if it
is missing they fail with that message, never skip.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SO_PIN = "5678-so"


@dataclass(frozen=True)
class SoftHsm:
    """One initialised token: its label and user PIN, and the directory of its files."""

    directory: Path
    token: str = "kcm-test"
    pin: str = "1234-user"

    def uri(self, *, object: str = "kcm-l1", pin: str | None = None, token: str | None = None,
            pin_file: Path | None = None) -> str:
        """The ``l1_pkcs11`` URI of key ``object`` in this token (or another ``token``), with
        the PIN as ``pin-value`` (default: the right one) or from ``pin_file``."""
        pin_part = (f"pin-source=file:{quote(str(pin_file))}" if pin_file is not None
                    else f"pin-value={quote(self.pin if pin is None else pin, safe='')}")
        return (f"pkcs11:token={quote(token or self.token)};object={quote(object)}"
                f"?module-path={MODULE}&{pin_part}")


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHsm]:
    """A new SoftHSM2 token in ``tmp_path``; SOFTHSM2_CONF points at its configuration for
    this process and the processes it starts."""
    util = shutil.which("softhsm2-util")
    if util is None or not Path(MODULE).exists():
        pytest.fail("SoftHSM2 is not installed: apt-get install softhsm2 (.ci/run does)")
    directory = tmp_path / "softhsm"
    (directory / "tokens").mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\n"
                    "objectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    hsm = SoftHsm(directory)
    subprocess.run([util, "--init-token", "--free", "--label", hsm.token, "--pin", hsm.pin,
                    "--so-pin", SO_PIN], check=True, capture_output=True, timeout=60)
    # This process may have used SoftHSM2 already (with an earlier test's token directory):
    # it reads SOFTHSM2_CONF again at C_Initialize.
    import pkcs11

    pkcs11.lib(MODULE).reinitialize()
    yield hsm
