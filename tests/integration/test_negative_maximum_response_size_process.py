"""A negative Maximum Response Size, against a real kcm-core and a real kcm-gateway in front
of it: the request is refused whole, Invalid Field, and nothing of it runs.

It was read as a bound no answer meets: every success was answered Response Too Large
("the response exceeds the Maximum Response Size of -1 bytes"), as if the answer had been
too long, and a Create was carried out and undone. The refusal is the same at both planes,
for requests the gateway forwards, answers on its fast path (L4) or on its general path,
in KMIP 1.x and 2.x.
"""

from __future__ import annotations

import sqlite3

import pytest

from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.testing.requests import create_l4, create_managed, encrypt, get, request, response
from tests.e2e_support import CoreProcess, GatewayProcess, core_process, gateway_process

__all__ = ["core_process", "gateway_process"]


def managed_objects(core: CoreProcess) -> int:
    with sqlite3.connect(core.database.removeprefix("sqlite:///")) as connection:
        return connection.execute("SELECT count(*) FROM managed_objects").fetchone()[0]


@pytest.mark.parametrize("version", [(1, 2), (1, 4), (2, 1)])
def test_a_negative_maximum_response_size_is_refused_whole_at_both_planes(
        core_process: CoreProcess, gateway_process: GatewayProcess,
        version: tuple[int, int]) -> None:
    with gateway_process.client() as client:
        token = response(client.send(request(create_l4(), version=(2, 1)))) \
            .batch_items[0].response_payload.unique_identifier
        uid = response(client.send(request(create_managed(), version=(2, 1)))) \
            .batch_items[0].response_payload.unique_identifier
    requests = {
        "get (forwarded)": lambda: [get(uid)],
        "create (forwarded)": lambda: [create_managed()],
        "l4 encrypt (fast path)": lambda: [encrypt(token)],
        "l4 encrypt twice (fast path)": lambda: [encrypt(token), encrypt(token)],
        "l4 create": lambda: [create_l4()],
    }
    stored = managed_objects(core_process)
    for plane in (core_process, gateway_process):
        with plane.client() as client:
            for name, items in requests.items():
                for size in (-1, -(2**31)):
                    answer = response(client.send(request(
                        *items(), version=version, maximum_response_size=size)))
                    assert [(item.result_status, item.result_reason, item.result_message)
                            for item in answer.batch_items] == [
                        (ResultStatus.OPERATION_FAILED, ResultReason.INVALID_FIELD,
                         f"Maximum Response Size {size} is negative")], (plane, name, size)
                    assert answer.header.version == version
            # A positive bound is still a bound: the same Get within a roomy one succeeds.
            roomy = response(client.send(request(get(uid), version=version,
                                                 maximum_response_size=1 << 16)))
            assert roomy.batch_items[0].result_status == ResultStatus.SUCCESS
    assert managed_objects(core_process) == stored  # no Create was run (nor undone)
