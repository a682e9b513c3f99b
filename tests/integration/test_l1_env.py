"""L1 given in an environment variable (``core.l1_key_env``, the design's "env secret"): for a
secret store (a container's secrets, a vault agent) that sets it for kcm-core and the `kcm`
commands. Nothing is written to disk; `kcm core new-l1-key` prints a new key for it."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from kcm.kmip.enums import ResultStatus
from kcm.testing.processes import BIN, process_env
from kcm.testing.requests import create_managed, request, response
from tests.e2e_support import CoreProcess, deploy

VARIABLE = "KCM_TEST_L1_KEY"


def new_key() -> str:
    made = subprocess.run([str(BIN / "kcm"), "core", "new-l1-key"], env=process_env(),
                          capture_output=True, text=True, check=True, timeout=60)
    [line] = made.stdout.splitlines()
    assert len(base64.b64decode(line, validate=True)) == 32 and made.stderr == ""
    return line


def test_init_takes_the_key_from_the_environment_and_never_writes_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "core"
    root.mkdir(mode=0o700)
    core = CoreProcess(root, f"sqlite:///{root / 'kcm-core.db'}", l1_key_env=VARIABLE)
    core.write_config()
    monkeypatch.delenv(VARIABLE, raising=False)
    refused = core.kcm("core", "init", check=False)
    assert refused.returncode == 2
    assert (f"the environment variable {VARIABLE} (core.l1_key_env) is not set: set it to a "
            "new key (`kcm core new-l1-key` prints one)") in refused.stderr
    keys = {new_key() for _ in range(3)}
    assert len(keys) == 3  # each a new random key
    monkeypatch.setenv(VARIABLE, keys.pop())
    assert core.kcm("core", "init").returncode == 0
    assert not (root / "l1.key").exists()
    checked = core.kcm("config", "check", check=False)
    assert f"core.l1_key_env: the L1 key in the environment variable {VARIABLE} loads" in (
        checked.stdout)
    monkeypatch.setenv(VARIABLE, keys.pop())  # another deployment's key
    refused = core.kcm("core", "init", check=False)
    assert refused.returncode == 2 and "is not the L1 key of this database" in refused.stderr


def test_kcm_core_serves_with_its_l1_from_the_environment_and_refuses_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    key_file = core.root / "l1.key"
    monkeypatch.setenv(VARIABLE, key_file.read_text().strip())
    key_file.unlink()
    core.l1_key_env = VARIABLE
    core.write_config()
    core.start()
    try:
        with core.client() as client:
            [made] = response(client.send(request(create_managed()))).batch_items
        assert made.result_status == ResultStatus.SUCCESS
        assert f"L1: the L1 key in the environment variable {VARIABLE}" in core.log.read_text()
    finally:
        core.stop()
    for value, reason in ((new_key(), "is not the L1 key of this database"),
                          ("bm90IGEga2V5", "L1 key must be 32 bytes, not 9")):
        monkeypatch.setenv(VARIABLE, value)
        run = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "kcm-core", "-c",
                              str(core.config), "--log-format", "text"], cwd=core.root,
                             env=process_env(), capture_output=True, text=True, timeout=60)
        assert run.returncode == 1 and "Traceback" not in run.stdout + run.stderr
        assert reason in run.stdout + run.stderr, run.stdout + run.stderr
        assert value not in run.stdout + run.stderr  # never the key itself
