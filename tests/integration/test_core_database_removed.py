"""The SQLite database file removed under a running kcm-core (an operator's `rm`, a restore
done without stopping the core, a cleanup job). Connections keep the removed file open, and
what they committed there would be lost at the next start: the core acknowledges no write
once its file is gone, says it is not ready, and does not make an empty one in its
place."""

from __future__ import annotations

from pathlib import Path

from kcm.kmip.enums import ResultStatus
from kcm.kmip.messages import decode_response
from kcm.testing.processes import deploy, free_port, scrape
from kcm.ttlv import decode
from tests.integration.test_core_crash import CREATE


def test_no_write_is_acknowledged_once_the_database_file_is_removed(tmp_path: Path) -> None:
    db = tmp_path / "core" / "kcm.db"
    core = deploy(tmp_path / "core", f"sqlite:///{db}")
    core.metrics_port = free_port()
    core.write_config()
    core.start()
    try:
        with core.client() as client:
            [made] = decode_response(decode(client.send(CREATE))).batch_items
            assert made.result_status == ResultStatus.SUCCESS
            for name in ("kcm.db", "kcm.db-wal", "kcm.db-shm"):
                (db.parent / name).unlink(missing_ok=True)
            answers = [decode_response(decode(client.send(CREATE))).batch_items[0]
                       for _ in range(3)]
        assert [a.result_status for a in answers] == [ResultStatus.OPERATION_FAILED] * 3
        assert all(a.result_message.startswith("the key store is unavailable")
                   for a in answers)
        assert scrape(core.metrics_port, "/readyz")[0] == 503
        log = core.log.read_text()
        assert "the database file was removed or replaced" in log
        # ... and no empty database is made in its place (SQLite would create one, with
        # the umask's mode, on the pool's next connection).
        assert not db.exists()
        assert "the SQLite database file is missing" in log
    finally:
        core.stop()
    assert not db.exists()
