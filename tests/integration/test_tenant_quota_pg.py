"""Two real kcm-cores on one PostgreSQL database race one tenant's Creates at its bound
(``max_objects_per_tenant``): however the requests interleave (each core's group commits,
the two cores' transactions), the tenant ends with exactly its bound of rows, its kept
count equal to them, and every Create over it answered Server Limit Exceeded; another
tenant's Creates meanwhile all succeed."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
import sqlalchemy

from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.testing.postgres import fresh_database
from kcm.testing.processes import deploy
from kcm.testing.requests import CONTINUE, create_managed, request, response

V21 = (2, 1)
HELD = 2  # demo's tenant key and service key app
ROOM = 60
CLIENTS_PER_CORE = 3
_databases = itertools.count()


@pytest.mark.long  # ten seconds or more
def test_two_cores_racing_at_the_bound_never_go_past_it(tmp_path: Path,
                                                         postgres_url: str) -> None:
    url = fresh_database(postgres_url, f"kcm_quota_{next(_databases)}")
    first = deploy(tmp_path / "core1", url, max_objects_per_tenant=HELD + ROOM)
    cores = [first, first.replica(tmp_path / "core2")]
    engine = sqlalchemy.create_engine(url)
    made: list[str] = []
    others: list[bool] = []
    failures: list[str] = []

    def client_run(index: int) -> None:
        try:
            with cores[index % 2].client("app") as client:
                for _ in range(8):  # 3 x 2 clients x 8 requests x 8 items: 384 asked
                    answers = response(client.send(request(
                        *[create_managed()] * 8, version=V21, continuation=CONTINUE)))
                    for answer in answers.batch_items:
                        if answer.result_status == ResultStatus.SUCCESS:
                            made.append(answer.response_payload.unique_identifier)
                        elif answer.result_reason != ResultReason.SERVER_LIMIT_EXCEEDED:
                            failures.append(f"{answer.result_reason} {answer.result_message}")
        except Exception as e:  # noqa: BLE001
            failures.append(f"client {index}: {type(e).__name__}: {e}")

    def other_tenant(index: int) -> None:
        try:
            with cores[index].client("other_app") as client:
                for _ in range(6):
                    answers = response(client.send(request(create_managed(), version=V21)))
                    others.extend(a.result_status == ResultStatus.SUCCESS
                                  for a in answers.batch_items)
        except Exception as e:  # noqa: BLE001
            failures.append(f"other {index}: {type(e).__name__}: {e}")

    try:
        for core in cores:
            core.start()
        threads = [threading.Thread(target=client_run, args=(i,))
                   for i in range(2 * CLIENTS_PER_CORE)]
        threads += [threading.Thread(target=other_tenant, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert failures == []
        assert len(made) == len(set(made)) == ROOM
        assert others == [True] * 12
        with engine.connect() as connection:
            rows = dict(connection.execute(sqlalchemy.text(
                "SELECT tenant, count(*) FROM managed_objects GROUP BY tenant")).all())
            stored = dict(connection.execute(sqlalchemy.text(
                "SELECT name, stored FROM tenants")).all())
        assert rows["demo"] == stored["demo"] == HELD + ROOM
        assert rows["other"] == stored["other"] == HELD + 12
    finally:
        for core in cores:
            core.stop()
        engine.dispose()
