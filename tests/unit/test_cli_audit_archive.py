"""``kcm audit archive``: the oldest records exported to a file that verifies on its own,
a MACed base marker written, the records deleted in short transactions; ``kcm audit
verify`` from the base on; an archive interrupted in its deletes verifies and runs again."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import delete, func, select

from kcm.cli import main
from kcm.core import audit_archive, keys
from kcm.core.audit import (
    BASE_META_KEY,
    AuditEvent,
    append_audit,
    base_marker,
    make_checkpoint,
)
from kcm.core.store.repository import get_meta, set_meta
from kcm.core.store.schema import AuditLog, Meta
from tests.unit.test_audit import write_legacy_chain
from tests.unit.test_cli_audit import Deployment

Capsys = pytest.CaptureFixture[str]


@pytest.fixture(name="deployment")
def initialised(tmp_path: Path, capsys: Capsys) -> Deployment:
    deployed = Deployment(tmp_path)
    assert deployed.kcm(capsys, "core", "init")[0] == 0
    return deployed


def _seqs(deployment: Deployment) -> tuple[int, int, int]:
    return deployment.run(lambda s: s.execute(
        select(func.min(AuditLog.seq), func.max(AuditLog.seq), func.count())).one())


def _archive(deployment: Deployment, capsys: Capsys, *argv: str) -> tuple[int, str]:
    return deployment.kcm(capsys, "audit", "archive", *argv)


def test_archive_then_verify_from_the_base(deployment: Deployment, capsys: Capsys) -> None:
    deployment.append(20)
    archive = deployment.root / "audit-1.jsonl"
    status, out = _archive(deployment, capsys, "--until-seq", "12", "-o", str(archive),
                           "--batch", "5")
    assert status == 0, out
    assert "audit records 1..12 (12) written to" in out
    assert "12 archived audit records deleted from the database in 3 transactions" in out
    assert _seqs(deployment) == (13, 20, 8)
    assert deployment.kcm(capsys, "audit", "verify") == (
        0, "audit log intact: 8 records verified; from record 13: records up to 12 archived "
           "(the base marker verified)\n")
    assert deployment.kcm(capsys, "audit", "verify", "--export", str(archive)) == (
        0, "audit export intact: 12 records verified (1 to 12, from the chain's first); "
           "1 run of consecutive records\n")

    # A second archive continues the first: its file starts where the first ended, and the
    # two and an export of the rest, put together, verify as one run.
    second = deployment.root / "audit-2.jsonl"
    assert _archive(deployment, capsys, "--until-seq", "15", "-o", str(second))[0] == 0
    rest = deployment.root / "rest.jsonl"
    assert deployment.kcm(capsys, "audit", "export", "-o", str(rest))[0] == 0
    whole = deployment.root / "whole.jsonl"
    whole.write_text(archive.read_text() + second.read_text() + rest.read_text())
    assert deployment.kcm(capsys, "audit", "verify", "--export", str(whole)) == (
        0, "audit export intact: 20 records verified (1 to 20, from the chain's first); "
           "1 run of consecutive records\n")
    # Without the oldest archive, the history does not start at the chain's first record,
    # and the answer says so.
    later = deployment.root / "later.jsonl"
    later.write_text(second.read_text() + rest.read_text())
    assert deployment.kcm(capsys, "audit", "verify", "--export", str(later)) == (
        0, "audit export intact: 8 records verified (13 to 20, records before 13 not in it); "
           "1 run of consecutive records\n")
    # New records chain on as before.
    deployment.append(2)
    assert deployment.kcm(capsys, "audit", "verify")[1].startswith(
        "audit log intact: 7 records verified; from record 16")


def test_checkpoints_of_archived_records_are_checked_against_the_archive(
        deployment: Deployment, capsys: Capsys) -> None:
    deployment.append(5)
    early = str(deployment.run(make_checkpoint))
    deployment.append(5)
    archive = deployment.root / "a.jsonl"
    assert _archive(deployment, capsys, "--until-seq", "7", "-o", str(archive))[0] == 0
    status, out = deployment.kcm(capsys, "audit", "verify", "--checkpoint", early)
    assert status == 0 and "1 checkpoints name archived records" in out, out
    assert deployment.kcm(capsys, "audit", "verify", "--export", str(archive),
                          "--checkpoint", early)[1].endswith("1 checkpoints matched\n")


def test_a_forged_or_moved_base_marker_fails(deployment: Deployment, capsys: Capsys) -> None:
    deployment.append(10)
    assert _archive(deployment, capsys, "--until-seq", "4", "-o",
                    str(deployment.root / "a.jsonl"))[0] == 0
    genuine = deployment.run(lambda s: get_meta(s, BASE_META_KEY))

    # Records 5 and 6 deleted, the marker moved to 6 without the key: its MAC fails.
    def move(session) -> None:
        digest = session.get(AuditLog, 6).digest
        session.execute(delete(AuditLog).where(AuditLog.seq <= 6))
        set_meta(session, BASE_META_KEY, f"6:{digest.hex()}:{genuine.split(':')[2]}")

    deployment.run(move)
    status, out = deployment.kcm(capsys, "audit", "verify")
    assert status == 1
    assert out.startswith("audit log BROKEN at record 7: the audit base marker (record 6) "
                          "fails its MAC")
    # Nor can the marker be removed: the chain would start at record 1.
    deployment.run(lambda s: s.execute(delete(Meta).where(Meta.key == BASE_META_KEY)))
    status, out = deployment.kcm(capsys, "audit", "verify")
    assert status == 1
    assert out.startswith("audit log BROKEN at record 1: record 1 is missing (next is 7): no "
                          "audit base marker says records before it were archived")


def test_a_record_deleted_above_the_base_fails(deployment: Deployment, capsys: Capsys) -> None:
    deployment.append(10)
    assert _archive(deployment, capsys, "--until-seq", "4", "-o",
                    str(deployment.root / "a.jsonl"))[0] == 0
    deployment.run(lambda s: s.execute(delete(AuditLog).where(AuditLog.seq == 5)))
    status, out = deployment.kcm(capsys, "audit", "verify")
    assert status == 1
    assert out.startswith("audit log BROKEN at record 5: record 5 is missing (next is 6): the "
                          "audit base marker says records up to 4 were archived")


def test_an_interrupted_archive_verifies_and_runs_again(
        deployment: Deployment, capsys: Capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    deployment.append(20)
    real = audit_archive.delete_below_base
    calls = []

    def interrupted(session, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt  # killed after its first batch
        return real(session, **kwargs)

    monkeypatch.setattr(audit_archive, "delete_below_base", interrupted)
    archive = deployment.root / "a.jsonl"
    assert main(["audit", "archive", "--until-seq", "12", "-o", str(archive), "--batch", "5",
                 "-c", str(deployment.config)]) != 0
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.undo()
    assert _seqs(deployment) == (6, 20, 15)
    assert deployment.kcm(capsys, "audit", "verify") == (
        0, "audit log intact: 8 records verified; from record 13: records up to 12 archived "
           "(the base marker verified); 7 archived records still to delete (an archive "
           "interrupted: run it again)\n")
    # Run again (the file is written already: none is needed).
    status, out = _archive(deployment, capsys, "--until-seq", "12")
    assert status == 0, out
    assert "archived already" in out and "7 archived audit records deleted" in out
    assert _seqs(deployment) == (13, 20, 8)
    assert deployment.kcm(capsys, "audit", "verify")[1].startswith(
        "audit log intact: 8 records verified; from record 13")
    assert deployment.kcm(capsys, "audit", "verify", "--export", str(archive))[0] == 0


def test_archive_by_time(deployment: Deployment, capsys: Capsys) -> None:
    deployment.run(lambda s: [append_audit(s, AuditEvent("p", "Get", "SUCCESS", f"c{n}"),
                                           clock=lambda n=n: 1_000_000_000 + n)
                              for n in range(10)])
    status, out = _archive(deployment, capsys, "--until", "1000000006", "-o",
                           str(deployment.root / "a.jsonl"))
    assert status == 0 and "audit records 1..6 (6)" in out, out
    assert _seqs(deployment) == (7, 10, 4)


@pytest.mark.parametrize(("until", "reason"), [
    ("10", "record 10 is not before the newest record (10)"),
    ("11", "record 11 is not before the newest record (10)"),
    ("0", "there is no record to archive"),
])
def test_archive_keeps_the_newest_record(deployment: Deployment, capsys: Capsys, until: str,
                                         reason: str) -> None:
    deployment.append(10)
    status, out = _archive(deployment, capsys, "--until-seq", until, "-o",
                           str(deployment.root / "a.jsonl"))
    assert status == 2 and reason in out, out
    assert _seqs(deployment) == (1, 10, 10)
    assert not (deployment.root / "a.jsonl").exists()


def test_archive_refuses_a_chain_that_does_not_verify(deployment: Deployment,
                                                      capsys: Capsys) -> None:
    deployment.append(10)
    deployment.run(lambda s: s.execute(delete(AuditLog).where(AuditLog.seq == 3)))
    status, out = _archive(deployment, capsys, "--until-seq", "5", "-o",
                           str(deployment.root / "a.jsonl"))
    assert status == 1 and "NOT archived" in out and "record 3 is missing" in out
    assert deployment.run(lambda s: get_meta(s, BASE_META_KEY)) is None


def test_unkeyed_records_are_archived_with_their_anchor_or_not_at_all(
        tmp_path: Path, capsys: Capsys) -> None:
    deployment = Deployment(tmp_path)
    write_legacy_chain(deployment.url, 3)
    keys.create_l1_keyfile(deployment.l1_file)
    assert deployment.kcm(capsys, "core", "init")[0] == 0  # record 4 anchors 1..3
    deployment.append(3)
    status, out = _archive(deployment, capsys, "--until-seq", "2", "-o",
                           str(tmp_path / "a.jsonl"))
    assert status == 2 and "record 2 has no MAC" in out
    archive = tmp_path / "b.jsonl"
    assert _archive(deployment, capsys, "--until-seq", "4", "-o", str(archive))[0] == 0
    status, out = deployment.kcm(capsys, "audit", "verify", "--export", str(archive))
    assert status == 0 and "the first 3 unkeyed" in out, out
    assert deployment.kcm(capsys, "audit", "verify")[1].startswith(
        "audit log intact: 3 records verified; from record 5")


def test_a_base_marker_is_macd_under_its_own_label(deployment: Deployment) -> None:
    deployment.append(3)
    digest = deployment.run(lambda s: s.get(AuditLog, 2).digest)
    marker = base_marker(deployment.store().audit_key, 2, digest)
    assert marker.split(":")[2] != deployment.run(
        lambda s: get_meta(s, "audit.head")).split(":")[2]
