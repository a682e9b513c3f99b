"""Through a real kcm-core on SQLite (review 6 fixes, helper "ha"): a tail cut while it runs
is refused, not covered by the next request's head; log_level = "warn" keeps the audit
lines and checkpoints; a client's megabyte of Interop or Log text stays out of the audit
record and the log line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from kcm.kmip.enums import InteropFunction, Operation, ResultStatus
from kcm.kmip.payloads.service import InteropRequest, LogRequest
from kcm.testing import requests as kmip
from tests.e2e_support import audit_rows, deploy, last_seq, wait_until


def _sqlite(core) -> sqlite3.Connection:
    return sqlite3.connect(core.database[len("sqlite:///"):])


def _log_lines(core) -> list[dict]:
    return [json.loads(line) for line in core.log.read_text().splitlines()
            if line.startswith("{")]


def test_a_running_core_does_not_cover_up_a_cut_tail(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.start()
    try:
        with core.client() as app:
            created = kmip.response(app.send(kmip.request(kmip.create_managed())))
            uid = created.batch_items[0].response_payload.unique_identifier
            for _ in range(3):
                kmip.response(app.send(kmip.request(kmip.get(uid))))
            newest = last_seq(core)
            # Someone with the database but not L1 deletes the newest records, head kept.
            with _sqlite(core) as database:
                database.execute("DELETE FROM audit_log WHERE seq > ?", (newest - 4,))
            answer = kmip.response(app.send(kmip.request(kmip.query())))
            assert answer.batch_items[0].result_status == ResultStatus.OPERATION_FAILED
        # No record was appended, and the head still names the deleted one.
        assert last_seq(core) == newest - 4
        verify = core.kcm("audit", "verify", check=False)
        assert (verify.returncode, verify.stdout) == (
            1, f"audit log BROKEN at record {newest - 3}: records {newest - 3}..{newest} are "
               f"missing ({newest - 4} records checked)\n")
        wait_until(lambda: any(
            line["level"] == "critical" and "names record" in line.get("traceback", "")
            for line in _log_lines(core)), "the refused append in the log")
    finally:
        core.stop()
    # Nor does it start again over the cut.
    with pytest.raises(RuntimeError, match=r"kcm-core exited \(1\)"):
        core.start()
    assert (f"the audit head marker names record {newest}, but the newest record is "
            f"{newest - 4}: the tail was cut back") in core.log.read_text()


def test_log_level_warn_keeps_the_audit_lines_and_checkpoints(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.audit_checkpoint_interval = 0.5
    core.write_config()
    core.config.write_text(core.config.read_text().replace(
        "[core]\n", '[core]\nlog_level = "warn"\n', 1))
    core.start()
    try:
        with core.client() as app:
            kmip.response(app.send(kmip.request(kmip.create_managed())))
        newest = last_seq(core)

        def logged() -> tuple[bool, bool]:
            lines = _log_lines(core)
            return (any(line["namespace"] == "kcm.audit" and line["seq"] == newest
                        for line in lines),
                    any(line["namespace"] == "kcm.audit.checkpoint"
                        and line.get("seq") == newest for line in lines))

        wait_until(lambda: logged() == (True, True), "the audit line and a checkpoint of it")
    finally:
        core.stop()
    lines = _log_lines(core)
    # The level still quiets the rest: no info line but the audit namespaces'.
    assert {line["namespace"] for line in lines if line["level"] == "info"} == {
        "kcm.audit", "kcm.audit.checkpoint"}
    verify = core.kcm("audit", "verify", "--checkpoint-log", str(core.log))
    assert verify.stdout.startswith(f"audit log intact: {newest} records verified; ")
    assert "checkpoints matched" in verify.stdout and " 0 checkpoints" not in verify.stdout


def test_a_megabyte_of_interop_or_log_text_stays_out_of_the_record_and_the_log(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.start()
    try:
        before = last_seq(core)
        big = "A" * 1_000_000
        with core.client() as app:
            for payload, operation in (
                    (InteropRequest(interop_function=InteropFunction.BEGIN,
                                    interop_identifier=big), Operation.INTEROP),
                    (LogRequest(log_message=big), Operation.LOG)):
                answer = kmip.response(app.send(kmip.request(
                    kmip.item(operation, payload), version=(2, 1))))
                assert answer.batch_items[0].result_status == ResultStatus.SUCCESS
        rows = audit_rows(core, before)
        assert [row["operation"] for row in rows] == ["INTEROP", "LOG"]
        assert rows[0]["detail"] == {"interop": "BEGIN " + "A" * 256}
        assert rows[1]["detail"] == {"log_message": "A" * 1024}
        wait_until(lambda: sum(line["namespace"] == "kcm.audit" and line["seq"] > before
                               for line in _log_lines(core)) == 2, "the two audit lines")
    finally:
        core.stop()
    assert max(len(line) for line in core.log.read_text().splitlines()) < 8192
