"""kcm-core with L1 in a PKCS#11 token, as a real `twistd` process against a fresh SoftHSM2
token: `kcm core init` creates the token key, a key made over KMIP reads back the same after
a restart, the audit chain (keyed from the token) verifies, and a wrong PIN or a missing
token stops the core at start with a clear message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kmip.core import enums

from tests.e2e_support import CoreProcess, deploy
from tests.softhsm import SoftHsm


def _create(core: CoreProcess) -> tuple[str, bytes]:
    client = core.pykmip()
    try:
        uid = client.create(enums.CryptographicAlgorithm.AES, 256)
        return uid, client.get(uid).value
    finally:
        client.close()


def _get(core: CoreProcess, uid: str) -> bytes:
    client = core.pykmip()
    try:
        return client.get(uid).value
    finally:
        client.close()


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_a_key_survives_a_restart_with_l1_in_the_token(
        tmp_path: Path, softhsm: SoftHsm) -> None:
    root = tmp_path / "core"
    pin_file = tmp_path / "l1.pin"
    pin_file.write_text(softhsm.pin + "\n")
    pin_file.chmod(0o600)
    core = deploy(root, f"sqlite:///{root / 'kcm.db'}", l1_pkcs11=softhsm.uri(pin_file=pin_file))
    assert not (root / "l1.key").exists()  # no key file: L1 is in the token
    init = core.kcm("core", "init")  # again: the token key exists, nothing changes
    assert "L1 key 'kcm-l1' in PKCS#11 token 'kcm-test' (existing)" in init.stdout
    core.start()
    try:
        uid, value = _create(core)
        assert len(value) == 32
        assert "L1: the L1 key 'kcm-l1' in PKCS#11 token 'kcm-test'" in core.log.read_text()
    finally:
        core.stop()
    core.start()
    try:
        assert _get(core, uid) == value
    finally:
        core.stop()
    assert "audit log intact" in core.kcm("audit", "verify").stdout


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_a_wrong_pin_or_a_missing_token_stops_the_core_with_a_clear_error(
        tmp_path: Path, softhsm: SoftHsm) -> None:
    root = tmp_path / "core"
    core = deploy(root, f"sqlite:///{root / 'kcm.db'}", l1_pkcs11=softhsm.uri())

    core.l1_pkcs11 = softhsm.uri(pin="0000")
    core.write_config()
    with pytest.raises(RuntimeError, match="kcm-core exited \\(1\\)"):
        core.start()
    assert ("kcm-core did not start: kcm-l1: PKCS#11 token 'kcm-test' refused the PIN "
            "(incorrect)") in core.log.read_text()
    # The wrong PIN is never logged (as a number of its own: a timestamp's microseconds,
    # ".300000", hold its digits).
    assert re.search(r"(?<![0-9])0000(?![0-9])", core.log.read_text()) is None

    core.l1_pkcs11 = softhsm.uri(token="gone")
    core.write_config()
    with pytest.raises(RuntimeError, match="kcm-core exited \\(1\\)"):
        core.start()
    assert "kcm-core did not start: kcm-l1: no PKCS#11 token 'gone'" in core.log.read_text()

    # A token key that is not this database's L1 (another label): refused too. `kcm core
    # init` does not make it for this database (it has an L1): another deployment's would.
    core.l1_pkcs11 = softhsm.uri(object="another")
    core.write_config()
    refused = core.kcm("core", "init", check=False)
    assert refused.returncode == 2
    assert "the database already has an L1 key" in refused.stderr
    from kcm.core.l1_pkcs11 import open_token_key

    open_token_key(softhsm.uri(object="another"), create=True)  # (what another's init does)
    with pytest.raises(RuntimeError, match="kcm-core exited \\(1\\)"):
        core.start()
    assert ("kcm-l1: the L1 key 'another' in PKCS#11 token 'kcm-test' is not the L1 key of "
            "this database") in core.log.read_text()
