"""``kcm audit archive`` and the paged ``kcm audit verify`` on PostgreSQL: archived, then
verified from the base, records committed between the pages verified past the head, an
interrupted archive run again."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select

from kcm.core.audit import AuditEvent, append_audit, verify_chain_paged
from kcm.core.audit_archive import ArchiveEnd, archive_end, delete_below_base, mark_base
from kcm.core.store.schema import AuditLog
from kcm.testing.postgres import fresh_database
from tests.unit.test_cli_audit import Deployment

_databases = itertools.count()


@pytest.fixture
def deployment(postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
               ) -> Deployment:
    deployed = Deployment(tmp_path)
    deployed.url = fresh_database(postgres_url, f"kcm_archive_{next(_databases)}")
    deployed.config.write_text(f'[core]\ndatabase = "{deployed.url}"\n'
                               f'l1_key_file = "{deployed.l1_file}"\n')
    assert deployed.kcm(capsys, "core", "init")[0] == 0
    return deployed


def test_archive_and_verify_on_postgresql(deployment: Deployment,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    deployment.append(30)
    archive = deployment.root / "a.jsonl"
    status, out = deployment.kcm(capsys, "audit", "archive", "--until-seq", "20", "-o",
                                 str(archive), "--batch", "7")
    assert status == 0, out
    assert "20 archived audit records deleted from the database in 3 transactions" in out
    assert deployment.kcm(capsys, "audit", "verify") == (
        0, "audit log intact: 10 records verified; from record 21: records up to 20 archived "
           "(the base marker verified)\n")
    assert deployment.kcm(capsys, "audit", "verify", "--export", str(archive))[0] == 0
    deployment.run(lambda s: s.execute(delete(AuditLog).where(AuditLog.seq == 21)))
    status, out = deployment.kcm(capsys, "audit", "verify")
    assert status == 1 and "record 21 is missing (next is 22)" in out


def test_an_interrupted_archive_and_a_writer_between_pages(deployment: Deployment) -> None:
    deployment.append(30)
    store = deployment.store()
    try:
        end: ArchiveEnd = store.run_sync(lambda s: archive_end(s, 25), write=False)
        assert store.run_sync(lambda s: mark_base(s, end))
        assert store.run_sync(lambda s: delete_below_base(s, limit=10)) == 10
        pages = []

        def read(fn):
            pages.append(1)
            result = store.run_sync(fn, write=False)
            store.run_sync(lambda s: append_audit(s, AuditEvent("p", "Get", "SUCCESS", "x")))
            return result

        result = verify_chain_paged(read, page=2)
        assert result.ok, result
        assert (result.base_seq, result.below_base_records) == (25, 15)
        assert result.past_head_records == len(pages) - 1
        assert not store.run_sync(lambda s: mark_base(s, end))  # there already
        while store.run_sync(lambda s: delete_below_base(s, limit=10)):
            pass
        assert store.run_sync(lambda s: s.scalar(select(func.min(AuditLog.seq)))) == 26
        assert verify_chain_paged(lambda fn: store.run_sync(fn, write=False)).ok
    finally:
        store.stopService()
