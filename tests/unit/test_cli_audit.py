"""``kcm audit verify`` with the L1 key file: the keyed chain, checkpoints given on the
command line or read from a saved log, and what ``kcm core init`` does for an unkeyed chain."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select
from twisted.logger import capturedLogs

from kcm.cli import main
from kcm.core import keys
from kcm.core.audit import (
    HEAD_META_KEY,
    AuditEvent,
    append_audit,
    log_checkpoint,
    make_checkpoint,
    record_digest,
)
from kcm.core.store.engine import Store
from kcm.core.store.repository import find_l2, get_meta, set_meta
from kcm.core.store.schema import AuditLog, Meta
from kcm.logging import log_observer
from tests.unit.test_audit import write_legacy_chain

DIGESTED = ("seq", "at", "principal", "tenant", "gateway", "source", "operation",
            "object_ids", "result_status", "result_reason", "correlation_id", "detail")


class Deployment:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "core.toml"
        self.l1_file = root / "l1.key"
        self.url = f"sqlite:///{root / 'kcm.db'}"
        self.config.write_text(f'[core]\ndatabase = "{self.url}"\n'
                               f'l1_key_file = "{self.l1_file}"\n')

    def store(self) -> Store:
        store = Store(self.url)
        store.audit_key = keys.derive_audit_key(keys.load_l1(self.l1_file))
        return store

    def append(self, count: int) -> None:
        store = self.store()
        store.run_sync(lambda s: [append_audit(s, AuditEvent("p", "Get", "SUCCESS", f"c{n}"))
                                  for n in range(count)])
        store.stopService()

    def run(self, session_fn):
        store = self.store()
        try:
            return store.run_sync(session_fn)
        finally:
            store.stopService()

    def kcm(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
        status = main([*argv, "-c", str(self.config)])
        captured = capsys.readouterr()
        return status, captured.out + captured.err


@pytest.fixture
def deployment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Deployment:
    deployed = Deployment(tmp_path)
    assert deployed.kcm(capsys, "core", "init")[0] == 0
    return deployed


def _rechain(session, *, strip_macs: bool = False) -> tuple[int, bytes]:
    """Every record's digest computed again, as someone without L1 can (their MACs
    removed if ``strip_macs``); the newest record's (seq, digest)."""
    prev = bytes(32)
    for row in session.scalars(select(AuditLog).order_by(AuditLog.seq)):
        row.prev_digest = prev
        row.digest = prev = record_digest(prev, **{n: getattr(row, n) for n in DIGESTED})
        if strip_macs:
            row.mac = None
        last = row.seq
    return last, prev


def _rewrite_record_2_the_old_way(session) -> None:
    session.get(AuditLog, 2).result_status = "OPERATION_FAILED"
    last, prev = _rechain(session)
    set_meta(session, HEAD_META_KEY, f"{last}:{prev.hex()}")


def test_verify_names_the_first_record_rewritten_without_the_key(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    deployment.append(3)
    assert deployment.kcm(capsys, "audit", "verify") == (
        0, "audit log intact: 3 records verified\n")
    deployment.run(_rewrite_record_2_the_old_way)
    status, out = deployment.kcm(capsys, "audit", "verify")
    assert status == 1
    assert out.startswith("audit log BROKEN at record 2: MAC does not match")


def test_verify_holds_the_chain_to_checkpoints(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    deployment.append(2)
    saved_head = deployment.run(lambda s: get_meta(s, HEAD_META_KEY))
    deployment.append(2)
    checkpoint = deployment.run(make_checkpoint)
    assert deployment.kcm(capsys, "audit", "verify", "--checkpoint", str(checkpoint)) == (
        0, "audit log intact: 4 records verified; 1 checkpoints matched\n")

    log_file = deployment.root / "core.log"
    stream = io.StringIO()
    observer = log_observer(stream, log_format="json")
    with capturedLogs() as events:
        log_checkpoint(deployment.run(make_checkpoint))
        deployment.append(1)
        log_checkpoint(deployment.run(make_checkpoint))
    for event in events:
        observer(event)
    log_file.write_text("twistd said something\n" + stream.getvalue())
    assert deployment.kcm(capsys, "audit", "verify", "--checkpoint-log", str(log_file)) == (
        0, "audit log intact: 5 records verified; 2 checkpoints matched\n")

    # The database put back as it was at record 2: genuine, but behind the checkpoints.
    def roll_back(session) -> None:
        session.execute(delete(AuditLog).where(AuditLog.seq > 2))
        set_meta(session, HEAD_META_KEY, saved_head)

    deployment.run(roll_back)
    assert deployment.kcm(capsys, "audit", "verify")[0] == 0
    status, out = deployment.kcm(capsys, "audit", "verify", "--checkpoint-log", str(log_file))
    assert status == 1
    assert out.startswith("audit log BROKEN at record 3: a checkpoint names record 5, but the "
                          "chain ends at 2")


def test_a_checkpoint_that_is_not_genuine_fails(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    deployment.append(1)
    checkpoint = deployment.run(make_checkpoint)
    forged = f"{checkpoint.seq}:{'11' * 32}:{checkpoint.mac.hex()}"
    status, out = deployment.kcm(capsys, "audit", "verify", "--checkpoint", forged)
    assert status == 1
    assert out.startswith(f"audit log NOT verified: checkpoint {forged} does not verify")


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "12:ab"], "is not SEQ:DIGEST:MAC"),
    (["--checkpoint-log", "/nonexistent/core.log"], "cannot read /nonexistent/core.log"),
])
def test_bad_checkpoints_are_bad_input(deployment: Deployment,
                                       capsys: pytest.CaptureFixture[str], argv: list[str],
                                       message: str) -> None:
    status, out = deployment.kcm(capsys, "audit", "verify", *argv)
    assert status == 2 and message in out


def test_a_log_without_checkpoints_is_bad_input(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    log_file = deployment.root / "empty.log"
    log_file.write_text('{"namespace": "kcm.audit", "text": "audit 1: ..."}\n')
    status, out = deployment.kcm(capsys, "audit", "verify", "--checkpoint-log", str(log_file))
    assert status == 2 and "holds no audit checkpoint" in out


def test_verify_needs_this_databases_l1(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    deployment.append(1)
    deployment.l1_file.unlink()
    status, out = deployment.kcm(capsys, "audit", "verify")
    assert status == 2 and "cannot load the L1 key" in out
    keys.create_l1_keyfile(deployment.l1_file)
    status, out = deployment.kcm(capsys, "audit", "verify")
    assert status == 2 and "is not the L1 key of this database" in out


def test_core_init_anchors_records_written_before_the_chain_was_keyed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deployment = Deployment(tmp_path)
    write_legacy_chain(deployment.url, 2)  # a database kcm-core wrote before 0002
    keys.create_l1_keyfile(deployment.l1_file)
    status, out = deployment.kcm(capsys, "audit", "verify")
    assert status == 1 and "no record is keyed" in out and "run `kcm core init`" in out
    status, out = deployment.kcm(capsys, "core", "init")
    assert status == 0
    assert "audit chain keyed: record 3 anchors the 2 records written before" in out
    assert deployment.kcm(capsys, "audit", "verify") == (
        0, "audit log intact: 3 records verified; the first 2 written before the chain was "
           "keyed, checked by digest only\n")
    status, out = deployment.kcm(capsys, "core", "init")
    assert status == 0 and "audit chain keyed" not in out


def test_an_export_of_a_chain_keyed_after_its_first_records_verifies_filtered_too(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Records a release before MACs wrote verify in an export beside the record that keyed
    the chain, which a filtered export keeps for that."""
    deployment = Deployment(tmp_path)
    write_legacy_chain(deployment.url, 2)  # tenant t1's
    keys.create_l1_keyfile(deployment.l1_file)
    assert deployment.kcm(capsys, "core", "init")[0] == 0  # record 3 keys the chain
    deployment.append(2)
    for argv in ((), ("--tenant", "t1")):
        lines = _export(deployment, capsys, *argv)
        assert [json.loads(line)["operation"] for line in lines][2] == "KeyAuditChain"
        status, out = _verify_export(deployment, capsys, lines)
        assert status == 0 and "the first 2 unkeyed, checked by digest only" in out, out


def test_core_init_refuses_a_chain_stripped_of_its_macs(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    """Records rewritten, digests recomputed, every MAC stripped and the head deleted by
    someone without L1: `kcm core init` does not anchor (launder) them, and verify does not
    advise it."""
    deployment.append(3)

    def forge(session) -> None:
        session.get(AuditLog, 2).principal = "FORGED"
        _rechain(session, strip_macs=True)
        session.execute(delete(Meta).where(Meta.key == HEAD_META_KEY))

    deployment.run(forge)
    status, out = deployment.kcm(capsys, "audit", "verify")
    assert status == 1 and "kcm core init" not in out
    assert deployment.kcm(capsys, "core", "init") == (
        2, "kcm core init: error: the newest audit record (3) has no MAC and is not due for "
           "anchoring (MACs removed?); run `kcm audit verify`\n")
    status, out = deployment.kcm(capsys, "audit", "verify")
    assert status == 1 and "BROKEN" in out
    assert deployment.run(lambda s: s.scalar(select(func.count()).select_from(AuditLog))) == 3


def test_commands_that_create_keys_audit_each_key(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    """tenant add, service add, service rotate and bootstrap: one record per key created,
    naming it, in the transaction that creates it; nothing when nothing is created."""
    def uid_of(out: str) -> str:
        return out.split("key ")[-1].split()[0]

    _, out = deployment.kcm(capsys, "core", "tenant", "add", "demo")
    l2 = uid_of(out)
    _, out = deployment.kcm(capsys, "core", "service", "add", "demo", "app")
    l3_1 = uid_of(out)
    _, out = deployment.kcm(capsys, "core", "service", "rotate", "demo", "app")
    l3_2 = uid_of(out)
    assert deployment.kcm(capsys, "core", "tenant", "add", "demo")[0] == 0  # exists: no key
    assert deployment.kcm(capsys, "core", "bootstrap", "demo", "app")[0] == 0  # both exist
    _, out = deployment.kcm(capsys, "core", "bootstrap", "other", "svc")
    other_l3 = uid_of(out)
    other_l2 = deployment.run(lambda s: find_l2(s, "other").uid)
    rows = deployment.run(lambda s: s.scalars(select(AuditLog).order_by(AuditLog.seq)).all())
    assert [(r.principal, r.operation, r.tenant, json.loads(r.object_ids)) for r in rows] == [
        ("kcm core tenant add", "AddTenant", "demo", [l2]),
        ("kcm core service add", "AddServiceKey", "demo", [l3_1]),
        ("kcm core service rotate", "AddServiceKey", "demo", [l3_2]),
        ("kcm core bootstrap", "AddTenant", "other", [other_l2]),
        ("kcm core bootstrap", "AddServiceKey", "other", [other_l3]),
    ]
    assert [json.loads(r.detail) for r in rows] == [
        {"level": "L2"}, {"level": "L3", "service": "app", "version": 1},
        {"level": "L3", "service": "app", "version": 2}, {"level": "L2"},
        {"level": "L3", "service": "svc", "version": 1}]
    assert all(r.source == "cli" and r.result_status == "SUCCESS" for r in rows)
    assert deployment.kcm(capsys, "audit", "verify") == (
        0, "audit log intact: 5 records verified\n")


@pytest.mark.parametrize(("column", "expression"), [
    ("principal", "CAST(principal AS BLOB)"),
    ("prev_digest", "hex(prev_digest)"),
    ("mac", "hex(mac)"),
    ("digest", "hex(digest)"),
    ("detail", "'{not json'"),
    ("object_ids", "'[not json'"),
])
def test_a_value_stored_in_another_type_is_named_as_an_altered_record(
        deployment: Deployment, capsys: pytest.CaptureFixture[str], column: str,
        expression: str) -> None:
    """SQLite keeps whatever type a writer stores: a record with the same bytes in another
    type fails where it is, and verify goes on to name it (it stopped with a TypeError)."""
    deployment.append(5)
    with sqlite3.connect(deployment.root / "kcm.db") as db:
        db.execute(f"UPDATE audit_log SET {column} = {expression} WHERE seq = 3")
    status, out = deployment.kcm(capsys, "audit", "verify")
    assert status == 1 and "BROKEN at record 3" in out, out


@pytest.mark.parametrize(("column", "expression"), [
    ("detail", "'{not json'"), ("object_ids", "'[not json'"),
    ("principal", "CAST(principal AS BLOB)"), ("at", "'soon'")])
@pytest.mark.parametrize("command", [("audit", "export"), ("audit", "tail", "-n", "100")])
def test_export_and_tail_show_an_altered_record_as_stored_and_go_on(
        deployment: Deployment, capsys: pytest.CaptureFixture[str], column: str,
        expression: str, command: tuple[str, ...]) -> None:
    deployment.append(5)
    with sqlite3.connect(deployment.root / "kcm.db") as db:
        db.execute(f"UPDATE audit_log SET {column} = {expression} WHERE seq = 3")
    status, out = deployment.kcm(capsys, *command)
    assert status == 0, out
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    altered = [r for r in records if r.get("malformed")]
    assert [r["seq"] for r in altered] == [3]
    assert max(r["seq"] for r in records) > 3  # the records after it were shown too


# kcm audit verify --export: an export checked on its own, away from the database.

def _export(deployment: Deployment, capsys: pytest.CaptureFixture[str], *argv: str
            ) -> list[str]:
    path = deployment.root / f"export-{len(list(deployment.root.glob('export-*')))}.jsonl"
    assert deployment.kcm(capsys, "audit", "export", "-o", str(path), *argv)[0] == 0
    return path.read_text().splitlines()


def _verify_export(deployment: Deployment, capsys: pytest.CaptureFixture[str],
                   lines: list[str], *argv: str) -> tuple[int, str]:
    path = deployment.root / "checked.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return deployment.kcm(capsys, "audit", "verify", "--export", str(path), *argv)


def test_an_export_verifies_on_its_own(deployment: Deployment,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    deployment.append(4)
    lines = _export(deployment, capsys)
    assert len(lines) == 4 and {"prev_digest", "mac", "digest"} <= json.loads(lines[0]).keys()
    assert _verify_export(deployment, capsys, lines) == (
        0, "audit export intact: 4 records verified (1 to 4, from the chain's first); 1 run "
           "of consecutive records\n")
    checkpoint = deployment.run(make_checkpoint)  # names record 4
    assert _verify_export(deployment, capsys, lines, "--checkpoint", str(checkpoint)) == (
        0, "audit export intact: 4 records verified (1 to 4, from the chain's first); 1 run "
           "of consecutive records; "
           "1 checkpoints matched\n")
    # A filtered export: each record verified, the runs counted.
    deployment.run(lambda s: append_audit(s, AuditEvent("other", "Destroy", "SUCCESS", "d1")))
    deployment.append(1)
    status, out = _verify_export(deployment, capsys,
                                 _export(deployment, capsys, "--operation", "Get"))
    assert (status, out) == (0, "audit export intact: 5 records verified (1 to 6, from the "
                                "chain's first); 2 runs of "
                                "consecutive records; 1 records of the chain between them "
                                "not in the export\n")


def test_export_and_tail_by_object_name_its_records_refusals_too(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    # "Who did what to key K" had no filter: a grep, which a refusal naming K only in
    # detail.requested, or a uid inside another, could throw off.
    events = [AuditEvent("a", "Create", "SUCCESS", "c1", object_ids=("k-1",)),
              AuditEvent("a", "Create", "SUCCESS", "c2", object_ids=("k-10",)),
              AuditEvent("b", "Get", "OPERATION_FAILED", "c3", result_reason="ITEM_NOT_FOUND",
                         detail={"requested": "k-1"}),
              AuditEvent("a", "Destroy", "SUCCESS", "c4", object_ids=("k-1", "k_2"))]
    deployment.run(lambda s: [append_audit(s, event) for event in events])
    status, out = deployment.kcm(capsys, "audit", "export", "--object", "k-1")
    assert status == 0
    assert [json.loads(line)["correlation_id"] for line in out.splitlines()] == [
        "c1", "c3", "c4"]
    status, out = deployment.kcm(capsys, "audit", "tail", "--object", "k-1", "-n", "1")
    assert [json.loads(line)["correlation_id"] for line in out.splitlines()] == ["c4"]
    assert deployment.kcm(capsys, "audit", "export", "--object", "k%")[1] == ""
    assert deployment.kcm(capsys, "audit", "export", "--object", "k-2")[1] == ""
    lines = _export(deployment, capsys, "--object", "k-1")
    assert _verify_export(deployment, capsys, lines)[0] == 0


def test_a_complete_export_with_a_record_removed_fails(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    # An archive file with a line deleted verified (exit status 0, "2 runs"): nothing told
    # it from a filtered export. --complete says the file must be one run.
    deployment.append(5)
    lines = _export(deployment, capsys)
    assert _verify_export(deployment, capsys, lines, "--complete")[0] == 0
    status, out = _verify_export(deployment, capsys, [*lines[:1], *lines[3:]], "--complete")
    assert (status, out) == (1, "audit export NOT verified: line 2: records 2..3 are missing "
                                "(next is 4): a complete export (--complete) holds every "
                                "record from its first to its last\n")
    status, out = _verify_export(deployment, capsys, [*lines[:2], *lines[3:]],
                                 "--complete", "--json")
    outcome = json.loads(out)
    assert (status, outcome["ok"], outcome["line"]) == (1, False, 3)
    assert outcome["reason"].startswith("record 3 is missing (next is 4)")
    # Without it, the same file is a filtered export's two runs.
    assert _verify_export(deployment, capsys, [*lines[:2], *lines[3:]])[0] == 0
    assert deployment.kcm(capsys, "audit", "verify", "--complete")[0] == 2


def _edited(line: str, **changes: object) -> str:
    record = json.loads(line)
    record.update(changes)
    return json.dumps(record, sort_keys=True)


@pytest.mark.parametrize("tamper, reason", [
    (lambda ls: [ls[0], _edited(ls[1], principal="someone else"), ls[2]],
     "line 2: record 2: its digest does not match its content"),
    (lambda ls: [ls[0], _edited(ls[1], result_status="OPERATION_FAILED", digest=record_digest(
        bytes.fromhex(json.loads(ls[1])["prev_digest"]),
        **{**_stored(json.loads(ls[1])), "result_status": "OPERATION_FAILED"}).hex()), ls[2]],
     "line 2: record 2: its MAC does not verify under this L1 key"),
    (lambda ls: [ls[0], ls[2], ls[1]], "line 3: record 2 comes after record 3"),
    (lambda ls: [ls[0], _edited(ls[1], mac=None), ls[2]],
     "line 2: record 2 has no MAC, after records that have one"),
    (lambda ls: [ls[0], _edited(ls[1], prev_digest="00" * 32), ls[2]],
     "line 2: record 2: its digest does not match its content"),
    (lambda ls: [*ls, "not json"], "line 4: not a readable audit record"),
    (lambda ls: [], "the export holds no audit record"),
    # Lines made up (or their MACs removed) without the KeyAuditChain record: they passed,
    # "checked by digest only".
    (lambda ls: [_edited(line, mac=None) for line in ls],
     "line 3: records without a MAC are not followed by the record that keyed the chain"),
    (lambda ls: [_edited(ls[0], mac=None), ls[1], ls[2]],
     "line 2: records without a MAC are not followed by the record that keyed the chain"),
    # The readable time and the line's fields: an `at` changed freely passed.
    (lambda ls: [ls[0], _edited(ls[1], at="2020-01-01T00:00:00.000000Z"), ls[2]],
     "line 2: record 2: its at is not the time of its at_us"),
    (lambda ls: [ls[0], _edited(ls[1], note="added"), ls[2]],
     "line 2: not an audit record as kcm audit export writes one (fields 'note' added"),
])
def test_an_altered_export_fails(deployment: Deployment, capsys: pytest.CaptureFixture[str],
                                 tamper, reason: str) -> None:
    deployment.append(3)
    status, out = _verify_export(deployment, capsys, tamper(_export(deployment, capsys)))
    assert status == 1
    assert out.startswith(f"audit export NOT verified: {reason}"), out


def _stored(record: dict) -> dict:
    """An export line's record as its columns hold it (what its digest is made of)."""
    return {"seq": record["seq"], "at": record["at_us"], "principal": record["principal"],
            "tenant": record["tenant"], "gateway": record["gateway"],
            "source": record["source"], "operation": record["operation"],
            "object_ids": json.dumps(record["object_ids"], separators=(",", ":")),
            "result_status": record["result_status"],
            "result_reason": record["result_reason"],
            "correlation_id": record["correlation_id"],
            "detail": None if record["detail"] is None else json.dumps(
                record["detail"], sort_keys=True, separators=(",", ":"))}


def test_an_export_under_another_l1_fails(deployment: Deployment,
                                          capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    deployment.append(2)
    lines = _export(deployment, capsys)
    (tmp_path / "other").mkdir(mode=0o700)
    other = Deployment(tmp_path / "other")
    assert other.kcm(capsys, "core", "init")[0] == 0
    status, out = _verify_export(other, capsys, lines)
    assert status == 1 and "its MAC does not verify under this L1 key" in out


def test_an_export_by_gateway_keeps_that_gateways_records_and_verifies(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    """A gateway's credential lost: its records alone (``--gateway``), for the incident."""
    rogue = "spiffe://kcm.test/gateway/gw1"
    deployment.append(2)
    deployment.run(lambda s: append_audit(s, AuditEvent(
        "spiffe://kcm.test/tenant/demo/admin/mallory", "Destroy", "SUCCESS", "d1",
        tenant="demo", gateway=rogue)))
    deployment.append(1)
    lines = _export(deployment, capsys, "--gateway", rogue)
    assert [json.loads(line)["gateway"] for line in lines] == [rogue]
    status, _ = _verify_export(deployment, capsys, lines)
    assert status == 0


def test_verify_json_is_one_object_a_script_reads(
        deployment: Deployment, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    deployment.append(3)
    status, out = deployment.kcm(capsys, "audit", "verify", "--json")
    assert status == 0
    assert out.count("\n") == 1
    intact = json.loads(out)
    assert intact["verified"] == "database"
    assert (intact["ok"], intact["records_checked"], intact["first_bad_seq"],
            intact["reason"]) == (True, 3, None, None)

    export = tmp_path / "export.jsonl"
    assert deployment.kcm(capsys, "audit", "export", "-o", str(export))[0] == 0
    status, out = deployment.kcm(capsys, "audit", "verify", "--export", str(export), "--json")
    assert status == 0
    exported = json.loads(out)
    assert (exported["verified"], exported["ok"], exported["records"],
            exported["first_seq"], exported["last_seq"]) == ("export", True, 3, 1, 3)

    deployment.run(_rewrite_record_2_the_old_way)
    status, out = deployment.kcm(capsys, "audit", "verify", "--json")
    assert status == 1
    broken = json.loads(out)
    assert (broken["ok"], broken["first_bad_seq"]) == (False, 2)
    assert broken["reason"].startswith("MAC does not match")


@pytest.mark.parametrize("asked", ["RemoveTenant", "remove-tenant", "REMOVE_TENANT",
                                   "remove tenant"])
def test_operation_filter_finds_an_operator_command_s_records(
        deployment: Deployment, capsys: pytest.CaptureFixture[str], asked: str) -> None:
    """The operator commands' records (RemoveTenant, AddTenant, ...) are found however the
    operation is spelt, as the KMIP ones (GET_ATTRIBUTES as get-attributes) are."""
    deployment.run(lambda s: [
        append_audit(s, AuditEvent("kcm core tenant remove", "RemoveTenant", "SUCCESS", "r1")),
        append_audit(s, AuditEvent("p", "GET_ATTRIBUTES", "SUCCESS", "g1"))])
    for command in ("export", "tail"):
        status, out = deployment.kcm(capsys, "audit", command, "--operation", asked)
        assert status == 0
        assert [json.loads(line)["operation"] for line in out.splitlines()] == ["RemoveTenant"]
    status, out = deployment.kcm(capsys, "audit", "export", "--operation", "get-attributes")
    assert [json.loads(line)["operation"] for line in out.splitlines()] == ["GET_ATTRIBUTES"]
