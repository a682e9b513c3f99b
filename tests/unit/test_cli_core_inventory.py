"""``kcm core tenant list|show|remove``, ``kcm core service list`` and ``kcm audit
tail|export`` on a real SQLite deployment, and that none of them (nor ``kcm audit verify``)
creates a database it was asked to read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kcm.cli import CommandError, main
from kcm.cli.audit_cmd import parse_time


@pytest.fixture
def deployment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    root = tmp_path / "core"
    root.mkdir(mode=0o700)
    config = root / "core.toml"
    config.write_text(f'[core]\ndatabase = "sqlite:///{root / "kcm.db"}"\n'
                      f'l1_key_file = "{root / "l1.key"}"\n')
    for argv in (["core", "init"], ["core", "tenant", "add", "demo"],
                 ["core", "service", "add", "demo", "app"],
                 ["core", "service", "add", "demo", "app"],
                 ["core", "bootstrap", "other", "billing"]):
        assert main([*argv, "-c", str(config)]) == 0
    capsys.readouterr()
    return config


def kcm(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_tenant_list(deployment: Path, capsys) -> None:
    status, out, _ = kcm(capsys, "core", "tenant", "list", "-c", str(deployment), "--json")
    assert status == 0
    assert [(r["tenant"], r["services"], r["objects"]) for r in json_lines(out)] == [
        ("demo", 1, 3), ("other", 1, 2)]
    status, out, _ = kcm(capsys, "core", "tenant", "list", "-c", str(deployment))
    assert out.startswith("demo  created ") and out.count("\n") == 2


def test_service_list_and_tenant_show(deployment: Path, capsys) -> None:
    status, out, _ = kcm(capsys, "core", "service", "list", "demo", "-c", str(deployment),
                         "--json")
    records = json_lines(out)
    assert [(r["service"], r["version"], r["state"]) for r in records] == [
        ("app", 1, "ACTIVE"), ("app", 2, "ACTIVE")]
    assert all(r["unique_identifier"].startswith("l3-") for r in records)
    status, out, _ = kcm(capsys, "core", "service", "list", "-c", str(deployment))
    assert out.count("\n") == 3
    status, out, _ = kcm(capsys, "core", "tenant", "show", "demo", "-c", str(deployment),
                         "--json")
    shown = json.loads(out)
    assert (len(shown["tenant_keys"]), len(shown["service_keys"]), shown["objects"]) == (
        1, 2, {})
    status, out, _ = kcm(capsys, "core", "tenant", "show", "demo", "-c", str(deployment))
    assert "service key (L3) app version 2" in out
    assert kcm(capsys, "core", "tenant", "show", "nobody", "-c", str(deployment)) == (
        2, "", "kcm core tenant show: error: no tenant 'nobody'\n")


def test_tenant_limit_and_what_list_and_show_say_of_it(deployment: Path, capsys) -> None:
    """A tenant's count of what it stores against its bound: the core's
    ``max_objects_per_tenant`` until ``kcm core tenant limit`` gives it its own; audited."""
    config = str(deployment)
    status, out, _ = kcm(capsys, "core", "tenant", "list", "-c", config, "--json")
    assert [(r["tenant"], r["stored"], r["bound"], r["own_bound"]) for r in json_lines(out)] \
        == [("demo", 3, 1_000_000, False), ("other", 2, 1_000_000, False)]
    assert kcm(capsys, "core", "tenant", "limit", "demo", "-c", config) == (
        0, "tenant demo: stored 3 of 1,000,000 (the core's max_objects_per_tenant)\n"
        "tenant demo: request rate none (batch items, shared by the cores; a running core "
        "takes a change within 5 s)\n", "")
    assert kcm(capsys, "core", "tenant", "limit", "demo", "--max-objects", "5000", "-c",
               config) == (0, "tenant demo: stored 3 of 5,000 (its own)\n"
                           "tenant demo: request rate none (batch items, shared by the "
                           "cores; a running core takes a change within 5 s)\n", "")
    status, out, _ = kcm(capsys, "core", "tenant", "show", "demo", "-c", config)
    assert out.startswith("tenant demo, created ") and (
        ", stored 3 of 5,000 (its own) (objects and L4 tombstones)\n") in out
    assert json.loads(kcm(capsys, "core", "tenant", "show", "demo", "-c", config, "--json")[1])[
        "bound"] == 5000
    assert kcm(capsys, "core", "tenant", "limit", "other", "--max-objects", "0", "-c",
               config)[1].startswith("tenant other: stored 2 of none (its own)\n")
    deployment.write_text(deployment.read_text() + "\n[core.limits]\nmax_objects_per_tenant = 7\n")
    assert kcm(capsys, "core", "tenant", "limit", "demo", "--max-objects", "default", "-c",
               config)[1].startswith(
        "tenant demo: stored 3 of 7 (the core's max_objects_per_tenant)\n")
    # (a BIGINT column: 19 digits may not fit; "²" is a digit to str.isdigit, not to int)
    for wrong in ("-1", "1" + "0" * 18, "\u00b2", "1\u00b2"):
        status, _, err = kcm(capsys, "core", "tenant", "limit", "demo", "--max-objects",
                             wrong, "-c", config)
        assert status == 2 and "--max-objects must be a whole number of at least 0" in err
    assert kcm(capsys, "core", "tenant", "limit", "nobody", "--max-objects", "1", "-c",
               config)[2] == "kcm core tenant limit: error: no tenant 'nobody'\n"
    status, out, _ = kcm(capsys, "audit", "tail", "-n", "3", "-c", config)
    assert [(r["operation"], r["tenant"], json.loads(r["detail"]) if isinstance(
        r["detail"], str) else r["detail"]) for r in json_lines(out)] == [
        ("SetTenantLimit", "demo", {"max_objects": 5000}),
        ("SetTenantLimit", "other", {"max_objects": 0}),
        ("SetTenantLimit", "demo", {"max_objects": None})]
    assert kcm(capsys, "audit", "verify", "-c", config)[0] == 0


def test_tenant_limit_recount_repairs_a_count_that_drifted(deployment: Path, capsys) -> None:
    """A kept count that is not the tenant's rows (too high: refused for rows it does not
    have; too low: the bound is not one) is counted again, set right and audited; a right
    one is left alone, unaudited."""
    import sqlite3

    config = str(deployment)
    database = deployment.parent / "kcm.db"
    with sqlite3.connect(database) as db:
        db.execute("UPDATE tenants SET stored = 40 WHERE name = 'demo'")
    assert kcm(capsys, "core", "tenant", "limit", "demo", "--recount", "-c", config) == (
        0, "tenant demo: count corrected from 40 to 3\n"
           "tenant demo: stored 3 of 1,000,000 (the core's max_objects_per_tenant)\n"
           "tenant demo: request rate none (batch items, shared by the cores; a running "
           "core takes a change within 5 s)\n", "")
    assert kcm(capsys, "core", "tenant", "limit", "demo", "--recount", "-c", config)[1] \
        .startswith("tenant demo: count right (3)\n")
    with sqlite3.connect(database) as db:
        db.execute("UPDATE tenants SET stored = 0 WHERE name = 'other'")
    status, out, _ = kcm(capsys, "core", "tenant", "limit", "other", "--recount", "--json",
                         "-c", config)
    assert json.loads(out) == {"tenant": "other", "stored": 2, "bound": 1_000_000,
                               "own_bound": False, "recounted_from": 0,
                               "requests_per_second": 0, "own_rate": False,
                               "request_burst": 0, "own_burst": False}
    status, out, _ = kcm(capsys, "audit", "tail", "-n", "2", "-c", config)
    assert [(r["operation"], r["tenant"], json.loads(r["detail"]) if isinstance(
        r["detail"], str) else r["detail"]) for r in json_lines(out)] == [
        ("RecountTenant", "demo", {"was": 40, "now": 3}),
        ("RecountTenant", "other", {"was": 0, "now": 2})]
    assert kcm(capsys, "audit", "verify", "-c", config)[0] == 0


def test_tenant_remove(deployment: Path, capsys) -> None:
    status, _, err = kcm(capsys, "core", "tenant", "remove", "other", "-c", str(deployment))
    assert status == 2 and "run again with --yes" in err
    assert kcm(capsys, "core", "tenant", "remove", "other", "--yes", "-c", str(deployment)) == (
        0, "tenant other removed with its 2 keys and objects\n", "")
    status, out, _ = kcm(capsys, "core", "tenant", "list", "-c", str(deployment), "--json")
    assert [r["tenant"] for r in json_lines(out)] == ["demo"]
    status, out, _ = kcm(capsys, "audit", "tail", "-n", "1", "-c", str(deployment))
    (record,) = json_lines(out)
    assert (record["operation"], record["tenant"]) == ("RemoveTenant", "other")
    assert kcm(capsys, "audit", "verify", "-c", str(deployment))[0] == 0


def append_records(config: Path, count: int) -> None:
    from kcm.core import keys
    from kcm.core.audit import AuditEvent, append_audit
    from kcm.core.store.engine import Store

    store = Store(f"sqlite:///{config.parent / 'kcm.db'}")
    store.audit_key = keys.derive_audit_key(keys.load_l1(config.parent / "l1.key"))
    store.run_sync(lambda s: [append_audit(s, AuditEvent(
        "p", "Get" if n % 2 else "Create", "SUCCESS", f"c{n}", tenant="demo"))
        for n in range(count)])
    store.stopService()


def test_audit_tail_and_export(deployment: Path, capsys, tmp_path: Path) -> None:
    append_records(deployment, 30)
    status, out, _ = kcm(capsys, "audit", "tail", "-c", str(deployment))
    records = json_lines(out)
    assert status == 0 and len(records) == 20 and all(r["at"].endswith("Z") for r in records)
    assert [r["correlation_id"] for r in records] == [f"c{n}" for n in range(10, 30)]
    status, out, _ = kcm(capsys, "audit", "tail", "-n", "2", "--operation", "create", "-c",
                         str(deployment))
    assert [r["correlation_id"] for r in json_lines(out)] == ["c26", "c28"]
    records = json_lines(kcm(capsys, "audit", "tail", "-n", "100", "-c", str(deployment))[1])
    assert len(records) == 5 + 30  # the fixture's keys (one record each), then the 30
    status, out, _ = kcm(capsys, "audit", "export", "--since", "1h", "-c", str(deployment))
    assert json_lines(out) == records
    status, out, _ = kcm(capsys, "audit", "export", "--until", "2000-01-01", "-c",
                         str(deployment))
    assert (status, out) == (0, "")
    target = tmp_path / "audit.jsonl"
    status, _, err = kcm(capsys, "audit", "export", "-o", str(target), "-c", str(deployment))
    assert json_lines(target.read_text()) == records
    assert err == f"{len(records)} audit records written to {target}\n"


def test_audit_export_writes_over_no_file(deployment: Path, capsys, tmp_path: Path) -> None:
    """As ``kcm core backup``: an existing file (an earlier export, or anything) is kept,
    and so is whatever a symbolic link names."""
    target = tmp_path / "audit.jsonl"
    target.write_text("an earlier export\n")
    assert kcm(capsys, "audit", "export", "-o", str(target), "-c", str(deployment)) == (
        2, "", f"kcm audit export: error: {target} exists; give a new file name\n")
    assert target.read_text() == "an earlier export\n"
    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "elsewhere.jsonl")
    assert kcm(capsys, "audit", "export", "-o", str(link), "-c", str(deployment))[0] == 2
    assert not (tmp_path / "elsewhere.jsonl").exists()


def test_a_failed_audit_export_leaves_no_file(deployment: Path, capsys, tmp_path: Path,
                                              monkeypatch) -> None:
    from kcm.cli import audit_cmd

    def broken(out, page) -> None:
        out.write("half a record")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit_cmd, "_write", broken)
    target = tmp_path / "audit.jsonl"
    assert kcm(capsys, "audit", "export", "-o", str(target), "-c", str(deployment)) == (
        2, "", f"kcm audit export: error: cannot write {target}: No space left on device\n")
    assert not target.exists()


def test_times() -> None:
    assert parse_time("2026-12-03T14:00:00Z", "--since") == 1796306400.0
    assert parse_time("2026-12-03", "--since") == 1796256000.0
    assert parse_time("15m", "--since", now=1000.0) == 100.0
    assert parse_time("1796306400", "--since") == 1796306400.0
    # What is no time the log can hold is refused in words, not a Python exception.
    for text in ("99999999999999999999", "nan", "inf", "1e400", "-5", "0001-01-01T00:00:00-12:00",
                 "99999999d"):
        with pytest.raises(CommandError, match="is not a time between 1970 and 9999"):
            parse_time(text, "--since", now=1000.0)


@pytest.mark.parametrize("argv", [
    ["audit", "verify"], ["audit", "tail"], ["audit", "export"], ["core", "tenant", "list"],
    ["core", "service", "list"], ["core", "tenant", "show", "demo"],
    ["core", "tenant", "add", "demo"], ["core", "bootstrap", "demo", "app"]])
def test_no_command_creates_the_database_it_reads(tmp_path: Path, capsys,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   argv: list[str]) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "l1.key").write_bytes(os.urandom(32))
    config = tmp_path / "etc" / "core.toml"
    config.parent.mkdir()
    config.write_text('[core]\ndatabase = "sqlite:///var/kcm-core.db"\n'
                      'l1_key_file = "var/l1.key"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd in (tmp_path, elsewhere):
        monkeypatch.chdir(cwd)
        status, out, err = kcm(capsys, *argv, "-c", str(config))
        assert (status, out) == (2, "")
        assert err.count("\n") == 1
        assert f"no database at {cwd / 'var' / 'kcm-core.db'}; a relative path" in err
    assert sorted(p.name for p in (tmp_path / "var").iterdir()) == ["l1.key"]


def test_a_database_without_the_schema_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty.db").write_bytes(b"")
    config = tmp_path / "core.toml"
    config.write_text(f'[core]\ndatabase = "sqlite:///{tmp_path / "empty.db"}"\n')
    status, out, err = kcm(capsys, "core", "tenant", "list", "-c", str(config))
    assert (status, out) == (2, "") and err.count("\n") == 1
    assert "has no kcm-core schema (kcm core init creates it)" in err


def test_backup_is_a_consistent_copy(deployment: Path, capsys, tmp_path: Path) -> None:
    import sqlite3

    append_records(deployment, 3)
    copy = tmp_path / "backup.db"
    status, out, err = kcm(capsys, "core", "backup", str(copy), "-c", str(deployment))
    assert (status, err) == (0, "")
    assert out == (f"{copy}: a consistent copy of {deployment.parent / 'kcm.db'} (5 objects, 8 "
                   "audit records); the L1 key is not in it: keep a copy of that apart\n")
    assert copy.stat().st_mode & 0o077 == 0
    with sqlite3.connect(copy) as connection:
        assert connection.execute("SELECT count(*) FROM tenants").fetchone() == (2,)
    connection.close()
    # Restored (the copy as the database), it is the same deployment: the chain verifies.
    restored = tmp_path / "restored.toml"
    restored.write_text(f'[core]\ndatabase = "sqlite:///{copy}"\n'
                        f'l1_key_file = "{deployment.parent / "l1.key"}"\n')
    assert kcm(capsys, "audit", "verify", "-c", str(restored))[0] == 0
    status, _, err = kcm(capsys, "core", "backup", str(copy), "-c", str(deployment))
    assert (status, err) == (2, f"kcm core backup: error: {copy} exists; give a new file name\n")
    assert not list(tmp_path.glob("*.partial"))


def test_service_rotate(deployment: Path, capsys) -> None:
    status, out, _ = kcm(capsys, "core", "service", "rotate", "demo", "app", "-c",
                         str(deployment))
    assert status == 0 and out.endswith("(version 3)\n")
    status, out, _ = kcm(capsys, "core", "service", "list", "demo", "-c", str(deployment),
                         "--json")
    assert [r["version"] for r in json_lines(out)] == [1, 2, 3]
    assert kcm(capsys, "core", "service", "rotate", "demo", "ap", "-c", str(deployment)) == (
        2, "", "kcm core service rotate: error: tenant demo has no service ap (kcm core "
               "service add creates one)\n")


def test_audit_tail_follows_until_interrupted(deployment: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from kcm.testing.processes import process_env

    append_records(deployment, 2)
    follower = subprocess.Popen(
        [sys.executable, "-m", "kcm", "audit", "tail", "-n", "1", "-f", "--interval", "0.05",
         "-c", str(deployment)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=process_env())
    try:
        assert json.loads(follower.stdout.readline())["correlation_id"] == "c1"
        append_records(deployment, 3)
        assert [json.loads(follower.stdout.readline())["correlation_id"]
                for _ in range(3)] == ["c0", "c1", "c2"]
        time.sleep(0.1)
    finally:
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=30)
    assert (follower.returncode, out, err) == (0, "", "")


def test_ctrl_c_during_a_read_of_audit_tail_lets_the_read_finish(
        deployment: Path, capsys, monkeypatch) -> None:
    """Ctrl-C that came in the middle of a read raised KeyboardInterrupt inside the database
    driver's cleanup, which printed a traceback: it now stops following after the read."""
    import signal
    import time

    from kcm.cli import audit_cmd

    append_records(deployment, 1)
    reads: list[str] = []
    run_in_store = audit_cmd.run_in_store

    def interrupted_read(*args, **kwargs):
        if not reads:  # the first read, before following
            reads.append("first")
            return run_in_store(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as a following read runs
        time.sleep(0.05)  # (where KeyboardInterrupt was raised)
        found = run_in_store(*args, **kwargs)
        reads.append("finished")
        return found

    monkeypatch.setattr(audit_cmd, "run_in_store", interrupted_read)
    handler = signal.getsignal(signal.SIGINT)
    assert main(["audit", "tail", "-n", "0", "-f", "--interval", "0.01",
                 "-c", str(deployment)]) == 0
    assert reads == ["first", "finished"]
    assert signal.getsignal(signal.SIGINT) is handler  # given back


def test_an_export_is_written_aside_and_named_only_once_whole(deployment: Path, capsys,
                                                               tmp_path: Path,
                                                               monkeypatch) -> None:
    """A killed export (SIGKILL, out of memory) left a part of it under the name asked for,
    looking complete, and the next export refused that name. While it is written only
    FILE.partial exists; FILE appears whole, synced, and never over one made meanwhile."""
    from kcm.cli import audit_cmd

    target = tmp_path / "audit.jsonl"
    seen: list[tuple[bool, bool]] = []
    write = audit_cmd._write

    def watching(out, page) -> None:
        write(out, page)
        seen.append((target.exists(), (tmp_path / "audit.jsonl.partial").exists()))

    monkeypatch.setattr(audit_cmd, "_write", watching)
    assert kcm(capsys, "audit", "export", "-o", str(target), "-c", str(deployment))[0] == 0
    assert seen and set(seen) == {(False, True)}
    assert target.exists() and not (tmp_path / "audit.jsonl.partial").exists()
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    raced = tmp_path / "raced.jsonl"

    def racing(out, page) -> None:
        write(out, page)
        raced.write_text("made meanwhile\n")

    monkeypatch.setattr(audit_cmd, "_write", racing)
    assert kcm(capsys, "audit", "export", "-o", str(raced), "-c", str(deployment))[0] == 2
    assert raced.read_text() == "made meanwhile\n"
    assert not (tmp_path / "raced.jsonl.partial").exists()
    monkeypatch.setattr(audit_cmd, "_write", write)
    assert kcm(capsys, "audit", "export", "-o", str(tmp_path / "b.jsonl"), "-c",
               str(deployment))[0] == 0
    assert len(synced) >= 2  # the file and its directory


def test_an_export_or_backup_never_writes_into_a_partial_it_did_not_make(
        deployment: Path, capsys, tmp_path: Path) -> None:
    """Another user able to write the directory made FILE.partial beforehand (0666, or a
    symbolic link): the command wrote the export or the backup into it and published it as
    FILE, readable and changeable by that user. It is refused now, and left as it was; the
    command's own partial is a directory only it can enter."""
    for command in (["audit", "export", "-o"], ["core", "backup"]):
        target = tmp_path / f"{command[0]}.out"
        planted = tmp_path / f"{command[0]}.out.partial"
        planted.write_text("")
        planted.chmod(0o666)
        status, _, err = kcm(capsys, *command, str(target), "-c", str(deployment))
        assert status == 2 and err.endswith(
            f"{planted} exists (left by a command stopped halfway?); remove it or give a new "
            "file name\n"), err
        assert not target.exists() and planted.read_text() == ""
        planted.unlink()
        planted.symlink_to(tmp_path / "elsewhere")
        assert kcm(capsys, *command, str(target), "-c", str(deployment))[0] == 2
        assert not (tmp_path / "elsewhere").exists() and not target.exists()
        planted.unlink()
        assert kcm(capsys, *command, str(target), "-c", str(deployment))[0] == 0
        assert target.stat().st_mode & 0o077 == 0 and target.stat().st_nlink == 1
        assert not planted.exists()


def test_the_kcm_program_runs_out_of_core_dumps(deployment: Path, monkeypatch) -> None:
    """`kcm` commands hold L1 (a tenant or service added or rotated, an audit verified),
    unwrapped keys, a new L1 key or a CA's private key: a crash with `ulimit -c` set wrote
    them into a core file (a reviewer found L1 in one). The program (its console script
    and `python -m kcm`) now keeps itself out of core dumps as the services do; `main`,
    run inside other programs, does not."""
    import resource
    import signal
    import subprocess
    import sys

    import kcm.cli
    from kcm.testing.processes import BIN, process_env

    def allow_core_dumps() -> None:
        # In the forked child: nothing imported here (another thread of pytest's may hold
        # the import lock at the fork, and the import then fails the child's start).
        resource.setrlimit(resource.RLIMIT_CORE, (-1, -1))

    calls: list[str] = []
    monkeypatch.setattr("kcm.no_core_dumps.forbid_core_dumps", lambda: calls.append("forbid"))
    monkeypatch.setattr(kcm.cli, "main", lambda: calls.append("main") or 0)
    with pytest.raises(SystemExit) as exit_:
        kcm.cli.run()
    assert (exit_.value.code, calls) == (0, ["forbid", "main"])
    monkeypatch.undo()

    for program in ([str(BIN / "kcm")], [sys.executable, "-m", "kcm"]):
        follower = subprocess.Popen(
            [*program, "audit", "tail", "-f", "--interval", "0.05", "-c", str(deployment)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=process_env(),
            preexec_fn=allow_core_dumps)
        try:
            follower.stdout.readline()  # it runs
            limits = Path(f"/proc/{follower.pid}/limits").read_text()
        finally:
            follower.send_signal(signal.SIGINT)
            follower.communicate(timeout=30)
        [core_line] = [line for line in limits.splitlines()
                       if line.startswith("Max core file size")]
        assert core_line.split()[4:6] == ["0", "0"], (program, core_line)


def test_tenant_limit_requests_per_second_and_what_list_and_show_say_of_it(
        deployment: Path, capsys) -> None:
    """A tenant's request rate: the core's ``requests_per_second_per_tenant`` (0: none)
    until ``kcm core tenant limit --requests-per-second`` gives it its own; audited as
    ``--max-objects`` is."""
    config = str(deployment)
    status, out, _ = kcm(capsys, "core", "tenant", "list", "-c", config, "--json")
    assert [(r["tenant"], r["requests_per_second"], r["own_rate"]) for r in json_lines(out)] \
        == [("demo", 0, False), ("other", 0, False)]
    status, out, _ = kcm(capsys, "core", "tenant", "limit", "demo", "--requests-per-second",
                         "2.5", "--request-burst", "10", "-c", config)
    assert out.splitlines()[1] == (
        "tenant demo: request rate 2.5/s (its own) burst 10 (its own) (batch items, shared by "
        "the cores; a running core takes a change within 5 s)")
    status, out, _ = kcm(capsys, "core", "tenant", "list", "-c", config)
    assert "  request rate 2.5/s (its own) burst 10 (its own)" in out.splitlines()[0]
    assert out.splitlines()[1].endswith("  request rate none")
    status, out, _ = kcm(capsys, "core", "tenant", "show", "demo", "-c", config)
    assert "\n  request rate 2.5/s (its own) burst 10 (its own) (batch items)\n" in out
    deployment.write_text(deployment.read_text() + "\n[core.limits]\n"
                          "requests_per_second_per_tenant = 100\n")
    shown = json.loads(kcm(capsys, "core", "tenant", "show", "other", "-c", config,
                           "--json")[1])
    assert (shown["requests_per_second"], shown["own_rate"], shown["request_burst"],
            shown["own_burst"]) == (100, False, 100, False)
    assert kcm(capsys, "core", "tenant", "limit", "other", "--requests-per-second", "0",
               "-c", config)[1].splitlines()[1].startswith(
        "tenant other: request rate none (its own) (batch items")
    status, out, _ = kcm(capsys, "core", "tenant", "limit", "demo", "--requests-per-second",
                         "default", "--request-burst", "default", "-c", config, "--json")
    assert (json.loads(out)["requests_per_second"], json.loads(out)["own_rate"]) == (100, False)
    for option, wrong in (("--requests-per-second", "-1"), ("--requests-per-second", "1e3"),
                          ("--requests-per-second", "\u00b2"), ("--requests-per-second", "."),
                          ("--requests-per-second", "1" + "0" * 10),
                          ("--request-burst", "1.5"), ("--request-burst", "-1")):
        status, _, err = kcm(capsys, "core", "tenant", "limit", "demo", option, wrong, "-c",
                             config)
        assert status == 2 and f"{option} must be a" in err, (option, wrong)
    status, out, _ = kcm(capsys, "audit", "tail", "-n", "3", "-c", config)
    assert [(r["operation"], r["tenant"], json.loads(r["detail"]) if isinstance(
        r["detail"], str) else r["detail"]) for r in json_lines(out)] == [
        ("SetTenantLimit", "demo", {"requests_per_second": 2.5, "request_burst": 10}),
        ("SetTenantLimit", "other", {"requests_per_second": 0.0}),
        ("SetTenantLimit", "demo", {"requests_per_second": None, "request_burst": None})]
    assert kcm(capsys, "audit", "verify", "-c", config)[0] == 0
