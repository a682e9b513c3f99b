"""``kcm key …`` and ``kcm l4 create`` against a real kcm-core and kcm-gateway (twistd
processes, as ``make run`` starts them): what each prints, its exit status (0 success, 1 a
KMIP failure answer with its reason on one stderr line, 2 usage or connection), and that
what encrypt writes, decrypt reads back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.cli import main
from kcm.testing.processes import (
    CoreProcess,
    GatewayProcess,
    deploy,
    free_port,
    process_env,
    running,
)
from tests.e2e_support import wait_until


@pytest.fixture(scope="module")
def planes(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    root = tmp_path_factory.mktemp("cli-key")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}")
    with running(core, GatewayProcess(root / "gateway", core)) as both:
        yield both


def client_args(core: CoreProcess, port: int, who: str = "app") -> list[str]:
    pair = getattr(core.pki, who)
    return ["--server", f"127.0.0.1:{port}", "--cert", str(pair.cert), "--key", str(pair.key),
            "--ca", str(core.pki.ca.cert)]


def kcm(capsysbinary: pytest.CaptureFixture[bytes], server: list[str], *argv: str
        ) -> tuple[int, bytes, str]:
    """Run ``kcm *argv`` in this process; (status, stdout, stderr)."""
    status = main([*argv, *server])
    out, err = capsysbinary.readouterr()
    return status, out, err.decode()


@pytest.fixture
def at_core(planes, capsysbinary):
    core, _ = planes
    server = client_args(core, core.port)
    return lambda *argv: kcm(capsysbinary, server, *argv)


@pytest.fixture
def at_gateway(planes, capsysbinary):
    core, gateway = planes
    server = client_args(core, gateway.port)
    return lambda *argv: kcm(capsysbinary, server, *argv)


def created(run, *argv: str) -> str:
    status, out, err = run("key", "create", *argv)
    assert (status, err) == (0, "")
    uid = out.decode()
    assert uid.endswith("\n") and uid.count("\n") == 1  # the Unique Identifier alone
    return uid.strip()


def test_lifecycle_at_the_core(at_core) -> None:
    uid = created(at_core, "--name", "cli-lifecycle")
    assert at_core("key", "locate", "--name", "cli-lifecycle") == (0, f"{uid}\n".encode(), "")
    status, out, _ = at_core("key", "get-attributes", uid, "State", "Cryptographic Length",
                             "--json")
    assert status == 0
    assert json.loads(out) == {"unique_identifier": uid, "attributes": {
        "State": "PreActive", "Cryptographic Length": 256}}
    assert at_core("key", "activate", uid) == (0, b"", "")
    status, out, _ = at_core("key", "get-attributes", uid)
    assert status == 0 and "State: Active\n" in out.decode()
    status, out, _ = at_core("key", "get", uid, "--json")
    got = json.loads(out)
    assert status == 0 and got["cryptographic_algorithm"] == "AES"
    assert len(bytes.fromhex(got["key"])) == 32
    status, out, _ = at_core("key", "get", uid)
    assert (status, out) == (0, f"{got['key']}\n".encode())
    assert at_core("key", "revoke", uid, "--reason", "key-compromise",
                   "--message", "test") == (0, b"", "")
    assert at_core("key", "destroy", uid) == (0, b"", "")
    status, out, err = at_core("key", "get", uid)
    assert (status, out) == (1, b"")
    assert err.startswith("kcm key get: ITEM_NOT_FOUND: ") and err.count("\n") == 1


def test_register_get_and_locate_json(at_core) -> None:
    material = bytes(range(32))
    status, out, err = at_core("key", "register", "--key-hex", material.hex(),
                               "--name", "cli-registered", "--json")
    assert (status, err) == (0, "")
    uid = json.loads(out)["unique_identifier"]
    status, out, _ = at_core("key", "get", uid, "--json")
    assert json.loads(out)["key"] == material.hex()
    status, out, _ = at_core("key", "locate", "--name", "cli-registered", "--json")
    assert (status, json.loads(out)) == (0, {"unique_identifiers": [uid]})


def test_encrypt_then_decrypt_aes_gcm(at_core, tmp_path: Path) -> None:
    uid = created(at_core)
    assert at_core("key", "activate", uid)[0] == 0
    status, out, err = at_core("key", "encrypt", uid, "--data-hex", b"a record".hex())
    assert status == 0 and len(out) == len(b"a record")
    lines = dict(line.split(" ") for line in err.splitlines())
    assert set(lines) == {"iv", "tag"}  # AES-GCM, the default for an AES key
    sealed = tmp_path / "sealed"
    sealed.write_bytes(out)
    status, out, _ = at_core("key", "decrypt", uid, "--in", str(sealed), "--iv-hex",
                             lines["iv"], "--tag-hex", lines["tag"])
    assert (status, out) == (0, b"a record")
    status, out, _ = at_core("key", "encrypt", uid, "--data-hex", "00ff", "--json")
    answer = json.loads(out)
    status, out, _ = at_core("key", "decrypt", uid, "--data-hex", answer["data"], "--iv-hex",
                             answer["iv"], "--tag-hex", answer["tag"], "--hex")
    assert (status, out) == (0, b"00ff\n")
    status, out, err = at_core("key", "decrypt", uid, "--data-hex", answer["data"],
                               "--iv-hex", answer["iv"], "--tag-hex", "00" * 16)
    assert (status, out) == (1, b"") and err.startswith("kcm key decrypt: ")


def test_decrypt_out_writes_only_a_file_of_this_users_alone(at_core, tmp_path: Path
                                                           ) -> None:
    """``--out`` with a plaintext: a new file is 0600, a file already this user's alone is
    written over; a symbolic link, another user's file (made beforehand in a shared
    directory), one others may read, or a second name of another file is refused, nothing
    written (the plaintext went through a link, or into a file its maker could read)."""
    uid = created(at_core)
    assert at_core("key", "activate", uid)[0] == 0
    status, out, _ = at_core("key", "encrypt", uid, "--data-hex", b"a secret".hex(), "--json")
    answer = json.loads(out)
    decrypt = ("key", "decrypt", uid, "--data-hex", answer["data"], "--iv-hex", answer["iv"],
               "--tag-hex", answer["tag"], "--out")
    plain = tmp_path / "plain"
    assert at_core(*decrypt, str(plain)) == (0, b"", "")
    assert (plain.read_bytes(), plain.stat().st_mode & 0o777) == (b"a secret", 0o600)
    plain.write_bytes(b"an older, longer plaintext")
    assert at_core(*decrypt, str(plain)) == (0, b"", "")
    assert plain.read_bytes() == b"a secret"

    victim = tmp_path / "victim"
    victim.write_bytes(b"unchanged")
    victim.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(victim)
    loose = tmp_path / "loose"
    loose.write_bytes(b"unchanged")
    loose.chmod(0o666)
    second_name = tmp_path / "second-name"
    os.link(victim, second_name)
    refused = {link: "is a symbolic link", loose: "is not this user's alone",
               second_name: "is not a file of one name"}
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.write_bytes(b"unchanged")
        theirs.chmod(0o600)
        os.chown(theirs, 65534, 65534)
        refused[theirs] = "is not this user's alone"
    for path, why in refused.items():
        status, out, err = at_core(*decrypt, str(path))
        assert (status, out) == (2, b"") and why in err, (path, err)
        assert path.read_bytes() == b"unchanged"
    assert victim.read_bytes() == b"unchanged"


def test_encrypt_cbc_reads_stdin_in_a_real_process(planes, at_core) -> None:
    core, _ = planes
    uid = created(at_core)
    assert at_core("key", "activate", uid)[0] == 0
    command = [sys.executable, "-m", "kcm", "key", "encrypt", uid, "--mode", "CBC",
               "--padding", "PKCS5", *client_args(core, core.port)]
    done = subprocess.run(command, input=b"from stdin", capture_output=True, env=process_env(),
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    iv = done.stderr.decode().split()[1]
    back = subprocess.run([*command[:4], "decrypt", *command[5:], "--iv-hex", iv],
                          input=done.stdout, capture_output=True, env=process_env(),
                          timeout=60, check=False)
    assert (back.returncode, back.stdout) == (0, b"from stdin"), back.stderr


def test_query(at_core) -> None:
    status, out, _ = at_core("key", "query", "--json")
    answer = json.loads(out)
    assert status == 0 and "CREATE" in answer["operations"]
    assert "SYMMETRIC_KEY" in answer["object_types"]


def test_l4_create_and_use_at_the_gateway(at_gateway) -> None:
    status, out, err = at_gateway("l4", "create")
    token = out.decode().strip()
    assert (status, err) == (0, "") and token.startswith("l4.")
    status, out, _ = at_gateway("key", "encrypt", token, "--data-hex", "0102", "--json")
    answer = json.loads(out)
    status, out, _ = at_gateway("key", "decrypt", token, "--data-hex", answer["data"],
                                "--iv-hex", answer["iv"], "--tag-hex", answer["tag"], "--hex")
    assert (status, out) == (0, b"0102\n")
    assert at_gateway("key", "get", token, "--json")[0] == 0
    # A managed key through the gateway: forwarded to the core.
    assert created(at_gateway)


def test_a_failure_answer_is_exit_1_with_one_line(at_gateway) -> None:
    status, out, err = at_gateway("key", "activate", "no-such-key")
    assert (status, out) == (1, b"")
    assert err.startswith("kcm key activate: ITEM_NOT_FOUND: ") and err.count("\n") == 1


def test_a_failure_echoing_try_again_in_the_client_s_words_is_exit_1(at_core) -> None:
    """An identifier the client gave, echoed in the answer, does not make it 75: the
    answer is Object Not Found, which no retry passes."""
    status, out, err = at_core("key", "get", "x; try again")
    assert (status, out) == (1, b""), err
    assert "no object x; try again" in err


def test_no_server_is_exit_75_with_one_line(planes, capsysbinary) -> None:
    """Nothing listening: unavailable now, EX_TEMPFAIL (a script may try again)."""
    core, _ = planes
    server = client_args(core, free_port())
    status, out, err = kcm(capsysbinary, server, "key", "query")
    assert (status, out) == (75, b"")
    assert err.startswith("kcm key query: error: cannot connect to 127.0.0.1:")
    assert err.count("\n") == 1


def test_a_client_certificate_the_server_does_not_trust_is_exit_2(planes, capsysbinary,
                                                                  tmp_path: Path) -> None:
    from kcm.pki import init_pki

    core, _ = planes
    stranger = init_pki(tmp_path / "stranger")
    server = ["--server", f"127.0.0.1:{core.port}", "--cert", str(stranger.app.cert),
              "--key", str(stranger.app.key), "--ca", str(core.pki.ca.cert)]
    status, out, err = kcm(capsysbinary, server, "key", "query")
    assert (status, out) == (2, b"") and err.count("\n") == 1
    assert err.startswith("kcm key query: error: ")


def test_a_client_configuration_file_is_enough(planes, capsysbinary, tmp_path: Path) -> None:
    core, gateway = planes
    config = tmp_path / "client.toml"
    config.write_text(f'[client]\nserver = "127.0.0.1:{gateway.port}"\n'
                      f'cert = "{core.pki.app.cert}"\nkey = "{core.pki.app.key}"\n'
                      f'ca = "{core.pki.ca.cert}"\n')
    status, out, err = kcm(capsysbinary, ["--client-config", str(config)], "l4", "create")
    assert (status, err) == (0, "") and out.startswith(b"l4.")


def test_operators_read_the_running_cores_database(planes, at_core, capsysbinary,
                                                   tmp_path) -> None:
    """kcm audit tail / kcm core tenant list / kcm core backup while kcm-core serves."""
    core, _ = planes
    uid = created(at_core)
    config = ["-c", str(core.config)]

    def lines(*argv: str) -> list[dict]:
        assert main([*argv, *config]) == 0
        return [json.loads(line) for line in capsysbinary.readouterr().out.splitlines()]

    (record,) = lines("audit", "tail", "-n", "1", "--operation", "create")
    assert (record["operation"], record["object_ids"], record["tenant"]) == (
        "CREATE", [uid], "demo")
    assert [r["tenant"] for r in lines("core", "tenant", "list", "--json")] == ["demo", "other"]
    assert main(["core", "backup", str(tmp_path / "copy.db"), *config]) == 0
    assert main(["audit", "verify", *config]) == 0


def test_a_removed_tenants_l4s_stop_working_at_the_gateway(core_process, gateway_process,
                                                           capsysbinary) -> None:
    """kcm core tenant remove while both planes run: the gateway drops the tenant's service
    keys (l3.state events), so its L4 tokens stop opening; another tenant is untouched."""
    core, gateway = core_process, gateway_process
    other = client_args(core, gateway.port, "other_app")
    demo = client_args(core, gateway.port)
    status, out, _ = kcm(capsysbinary, other, "l4", "create")
    token = out.decode().strip()
    assert status == 0 and kcm(capsysbinary, other, "key", "encrypt", token,
                               "--data-hex", "01")[0] == 0
    status, out, err = kcm(capsysbinary, [], "core", "tenant", "remove", "other", "--yes",
                           "-c", str(core.config))
    assert (status, err) == (0, "")
    wait_until(lambda: "l3.state for tenant other" in gateway.log.read_text(),
               "the gateway to apply the removal")
    status, _, err = kcm(capsysbinary, other, "key", "encrypt", token, "--data-hex", "01")
    assert status == 1 and err.startswith("kcm key encrypt: ")
    assert kcm(capsysbinary, other, "l4", "create")[0] == 1
    assert kcm(capsysbinary, demo, "l4", "create")[0] == 0
