"""Large answers through a real kcm-gateway in front of a real kcm-core (issue 11, "No tenant
can hurt another", defect 2): an answer over the link's frame size used to make the gateway
drop its link to the core, failing every tenant's forwarded requests for seconds.

Now no answer is larger than the maximum message size (successful items become Response
Too Large), link frames are sized from that limit, and another tenant's forwarded requests,
sent all along from a thread, never notice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kcm.kmip.enums import ObjectType, Operation, QueryFunction, ResultReason, ResultStatus
from kcm.kmip.messages import ResponseMessage, decode_response
from kcm.kmip.objects import OpaqueObject
from kcm.kmip.payloads import QueryRequest, RegisterRequest
from kcm.kmip.payloads.service import LocateRequest
from kcm.kmip.tags import Tag
from kcm.testing.processes import running
from kcm.testing.requests import create_managed, get, get_attributes, item, locate, request
from kcm.ttlv import decode
from tests.e2e_support import CoreProcess, GatewayProcess, deploy

MiB = 1 << 20


@contextmanager
def deployment(tmp_path: Path, max_message_size: int | None = None
               ) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    """A kcm-core and a kcm-gateway linked to it, both with ``max_message_size``."""
    # The batches here are about answer sizes, not the per-request bounds (batch items and
    # deadline): 5,000 Queries take about 10 s of core work, more on a busy machine.
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}",
                  max_message_size=max_message_size, max_batch_items=10_000,
                  request_deadline=120.0)
    gateway = GatewayProcess(tmp_path / "gateway", core, max_message_size=max_message_size)
    with running(core, gateway) as pair:
        yield pair


def answer(wire: bytes) -> ResponseMessage:
    return decode_response(decode(wire, max_size=len(wire)))


def succeeded(message: ResponseMessage) -> list:
    for one in message.batch_items:
        assert one.result_status == ResultStatus.SUCCESS, (one.result_reason,
                                                           one.result_message)
    return [one.response_payload for one in message.batch_items]


class Neighbour(threading.Thread):
    """Another tenant's application: Get Attributes of its own managed key through the
    gateway (forwarded to the core), again and again until stopped; every outcome kept."""

    def __init__(self, gateway: GatewayProcess) -> None:
        super().__init__(daemon=True)
        self.client = gateway.client("other_app")
        [created] = succeeded(answer(self.client.send(request(create_managed()))))
        self.uid = created.unique_identifier
        self.outcomes: list[str] = []
        self._stopped = threading.Event()

    def run(self) -> None:
        ask = request(get_attributes(self.uid, Tag.CRYPTOGRAPHIC_ALGORITHM))
        while not self._stopped.is_set():
            try:
                [one] = answer(self.client.send(ask)).batch_items
                self.outcomes.append("ok" if one.result_status == ResultStatus.SUCCESS
                                     else f"{one.result_reason!r}: {one.result_message}")
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                self.outcomes.append(repr(e))
            time.sleep(0.05)

    def __enter__(self) -> Neighbour:
        self.start()
        while not self.outcomes:  # it is working before the large request is sent
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1.5)  # past the time a dropped link takes to come back
        self._stopped.set()
        self.join(timeout=60)
        self.client.close()


def assert_the_link_stayed_up(core: CoreProcess, gateway: GatewayProcess,
                              neighbour: Neighbour) -> None:
    assert [o for o in neighbour.outcomes if o != "ok"] == []
    assert len(neighbour.outcomes) >= 20
    assert gateway.links() == 1
    assert "link to the core lost" not in gateway.log.read_text()
    assert "closing link" not in core.log.read_text()


def test_a_batch_answered_in_2_3_mb_is_response_too_large_and_the_link_stays_up(
        tmp_path: Path) -> None:
    """5,000 Queries (KMIP 2.1, Query Operations): a 240 KB request whose answer would be
    2.33 MB, over the default 1 MiB maximum message size and over the fixed 2 MiB link
    frames that made the gateway drop its link. The core answers every item Response Too
    Large in under 1 MiB (about 10 s of work for the core, one audit record per item)."""
    with deployment(tmp_path) as (core, gateway):
        neighbour = Neighbour(gateway)
        queries = request(*[item(Operation.QUERY, QueryRequest(
            query_functions=[QueryFunction.QUERY_OPERATIONS]))] * 5000, version=(2, 1))
        assert len(queries) == 240_072
        with neighbour, gateway.client("app") as client, \
                gateway.client("other_app") as other:
            wire = client.send(queries)
            # Right after, from another tenant: forwarded and answered. (On a connection
            # of its own: the neighbour's thread is using its connection meanwhile.)
            succeeded(answer(other.send(request(get_attributes(
                neighbour.uid, Tag.CRYPTOGRAPHIC_ALGORITHM)))))
        assert len(wire) <= MiB
        items = answer(wire).batch_items
        assert len(items) == 5000
        assert {(i.operation, i.result_reason, i.result_message) for i in items} == {
            (Operation.QUERY, ResultReason.RESPONSE_TOO_LARGE,
             f"the response exceeds the server's maximum message size of {MiB} bytes")}
        assert_the_link_stayed_up(core, gateway, neighbour)


def test_with_a_larger_maximum_message_size_large_objects_travel_whole(
        tmp_path: Path) -> None:
    """``limits.max_message_size`` = 4 MiB on both sides: a 2.5 MB Opaque Object (a request
    and an answer over the old fixed 2 MiB frames) is registered and read back through the
    gateway whole, and a batch of two Gets of it (5 MB) is Response Too Large in 4 MiB."""
    with deployment(tmp_path, max_message_size=4 * MiB) as (core, gateway):
        neighbour = Neighbour(gateway)
        blob = bytes(range(256)) * 10_000  # 2.56 MB
        with neighbour, gateway.client("app") as client:
            [registered] = succeeded(answer(client.send(request(item(
                Operation.REGISTER, RegisterRequest(
                    object_type=ObjectType.OPAQUE_OBJECT, attributes=[],
                    object=OpaqueObject(opaque_data_type=0x80000001,
                                        opaque_data_value=blob)))))))
            uid = registered.unique_identifier
            wire = client.send(request(get(uid)))
            [got] = succeeded(answer(wire))
            assert got.object.opaque_data_value == blob and len(wire) > 2 * MiB
            twice = client.send(request(get(uid), get(uid)))
        assert len(twice) <= 4 * MiB
        assert [i.result_reason for i in answer(twice).batch_items] == [
            ResultReason.RESPONSE_TOO_LARGE] * 2
        assert_the_link_stayed_up(core, gateway, neighbour)


def test_a_locate_over_the_maximum_message_size_is_response_too_large_for_everyone(
        tmp_path: Path) -> None:
    """A Locate of 800 objects: 38.5 KB of identifiers against a 32 KiB maximum message
    size on both sides. 800, and a lowered limit, because a Locate over the 1 MiB default
    needs some 22,000 objects (48 bytes an identifier) and each costs the core ~5 ms to
    create (a savepoint and an audit record) and ~0.7 ms to locate: minutes on this 2-core
    machine, where 800 take a few seconds (8 batches of 100 Creates, 8.8 KB a request).
    The same rule answers the gateway's client and a direct one; a paged Locate (Maximum
    Items) is the way to read them."""
    limit = 32 << 10
    with deployment(tmp_path, max_message_size=limit) as (core, gateway):
        with gateway.client("app") as client:
            for _ in range(8):
                succeeded(answer(client.send(request(*[create_managed()] * 100))))
        neighbour = Neighbour(gateway)
        with neighbour, gateway.client("app") as client:
            wire = client.send(request(locate()))
            page = client.send(request(item(Operation.LOCATE, LocateRequest(
                maximum_items=100))))
        assert len(wire) <= limit
        [refused] = answer(wire).batch_items
        assert (refused.result_reason, refused.result_message) == (
            ResultReason.RESPONSE_TOO_LARGE,
            f"the response exceeds the server's maximum message size of {limit} bytes")
        [found] = succeeded(answer(page))
        assert len(found.unique_identifiers) == 100
        with core.client("app") as direct:
            [also] = answer(direct.send(request(locate()))).batch_items
        assert also.result_reason == ResultReason.RESPONSE_TOO_LARGE
        assert_the_link_stayed_up(core, gateway, neighbour)
