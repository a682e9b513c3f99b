"""PostgreSQL failing a statement in the middle of a batch item for want of space
(SQLSTATE 53100, ``could not extend file ...: No space left on device``: a full data
directory; here a trigger raises it for one key's updates, on a real server): the whole
request is answered General Failure "the key store is unavailable" and logged as such,
never an item's "internal error" with a traceback (the transaction was
aborted under the item, and every request of the group after it then failed so too)."""

from __future__ import annotations

import sqlalchemy

from kcm.kmip.enums import ResultStatus
from kcm.testing.requests import CONTINUE, activate, create_managed, get, request, response
from tests.e2e_support import CoreProcess, core_process_pg  # noqa: F401  (fixture)

FULL = """
CREATE TABLE kcm_test_full (uid VARCHAR PRIMARY KEY);
CREATE FUNCTION kcm_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM kcm_test_full WHERE uid = NEW.uid) THEN
    RAISE EXCEPTION 'could not extend file "base/1/2": No space left on device'
      USING ERRCODE = 'disk_full';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER kcm_test_disk_full BEFORE UPDATE ON managed_objects
  FOR EACH ROW EXECUTE FUNCTION kcm_test_disk_full();
"""


def test_a_statement_failing_for_space_mid_item_fails_the_request_as_unavailable(
        core_process_pg: CoreProcess) -> None:  # noqa: F811
    core = core_process_pg
    with core.client() as client:
        uids = [answer.response_payload.unique_identifier for answer in response(
            client.send(request(create_managed(), create_managed()))).batch_items]
        engine = sqlalchemy.create_engine(core.database)
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql(FULL)
                connection.execute(sqlalchemy.text("INSERT INTO kcm_test_full VALUES (:u)"),
                                   {"u": uids[1]})
        finally:
            engine.dispose()
        # The second item's statements fail for space: the request is refused whole.
        for _ in range(3):
            answers = response(client.send(request(
                activate(uids[0]), activate(uids[1]), continuation=CONTINUE))).batch_items
            assert [a.result_status for a in answers] == [ResultStatus.OPERATION_FAILED]
            assert answers[0].result_message.startswith(
                "the key store is unavailable; try again (correlation id ")
        # The store works on: nothing of those requests stayed, and other work is served.
        [got] = response(client.send(request(get(uids[0])))).batch_items
        assert got.result_status == ResultStatus.SUCCESS
        [activated] = response(client.send(request(activate(uids[0])))).batch_items
        assert activated.result_status == ResultStatus.SUCCESS
    log = core.log.read_text()
    assert '"critical"' not in log and "internal error" not in log
    # One line each, naming the caller; not audited (its record would meet the store).
    lines = [line for line in log.splitlines() if "the key store is unavailable" in line]
    assert len(lines) == 3, lines
    assert all("service/app failed [correlation id " in line and "not audited" in line
               and "(could not extend file" in line for line in lines), lines
    assert core.kcm("audit", "verify").returncode == 0
