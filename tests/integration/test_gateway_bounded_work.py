"""Issue 11 ("No tenant can hurt another") at a real `twistd kcm-gateway` linked to a real
kcm-core: a forwarded request whose client leaves the gateway is stopped at the core (the
link's CANCEL) and audited so, the gateway's own batches are bounded by its
``max_batch_items``, and a seeded network fuzz run over the OASIS request vectors (and L4
requests) leaves both processes answering and the gateway's log free of tracebacks.

The fuzz run is bounded for the suite (:data:`FUZZ_CASES`, a few hundred cases); a longer
one is the same test with more cases and another seed::

    KCM_FUZZ_CASES=20000 KCM_FUZZ_SEED=7 PYTHONPATH=. .venv/bin/python -m pytest \\
        tests/integration/test_gateway_bounded_work.py -k fuzz
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.conformance.client import KmipClient, KmipClientError
from kcm.kmip.attributes import VENDOR_TAG, Attribute
from kcm.kmip.enums import ObjectType, Operation, ResultReason, ResultStatus
from kcm.kmip.messages import RequestBatchItem
from kcm.kmip.payloads import CreateRequest
from kcm.kmip.tags import Tag
from kcm.testing.processes import running
from kcm.testing.requests import (
    CONTINUE,
    create_l4,
    create_managed,
    encrypt,
    get,
    item,
    largest,
    locate,
    request,
    response,
)
from kcm.ttlv import Item, ItemType, decode
from tests.e2e_support import (
    CoreProcess,
    GatewayProcess,
    assert_cancelled_in_audit,
    audit_rows,
    counting_locate,
    deploy,
    last_seq,
    populated,
    wait_until,
)
from tests.mutations import HEADER_SHAPES, base_requests, mutate, mutate_bytes, random_shape

#: Asserts timings: run alone, after the parallel part of `make test`.
pytestmark = pytest.mark.serial

#: Objects in tenant demo: enough that a batch of 64 counting Locates runs for seconds.
OBJECTS = 400
#: The gateway's limits.max_batch_items (the core keeps its default, 64).
GATEWAY_BATCH_ITEMS = 4
#: Fuzz cases the suite sends, and how many between two health checks.
FUZZ_CASES = int(os.environ.get("KCM_FUZZ_CASES", "400"))
FUZZ_SEED = int(os.environ.get("KCM_FUZZ_SEED", "11"))
CHECK_EVERY = 50


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    root = tmp_path_factory.mktemp("gateway-bounded")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(root / "gateway", core)
    gateway.limits.update(max_batch_items=GATEWAY_BATCH_ITEMS)
    with running(core, gateway) as pair:
        populated(core, OBJECTS)
        yield pair


def client(server: CoreProcess | GatewayProcess, timeout: float = 30.0) -> KmipClient:
    pki = server.pki
    return KmipClient("127.0.0.1", server.port, cert=pki.app.cert, key=pki.app.key,
                      ca=pki.ca.cert, timeout=timeout)


def succeeded(kmip: KmipClient, wire: bytes) -> list:
    """Send ``wire``; its items, each asserted Success."""
    items = response(kmip.send(wire)).batch_items
    assert [(i.result_status, i.result_message) for i in items] == [
        (ResultStatus.SUCCESS, None)] * len(items)
    return items


# Cancellation over the link -----------------------------------------------------------------

def test_a_forwarded_request_whose_client_left_is_stopped_at_the_core(
        deployment: tuple[CoreProcess, GatewayProcess]) -> None:
    core, gateway = deployment
    before, links = last_seq(core), gateway.links()
    locates = request(*[counting_locate()] * 64, continuation=CONTINUE)
    with client(gateway, timeout=0.5) as impatient:
        impatient.connect()
        began = time.monotonic()
        with pytest.raises(KmipClientError):  # gives up waiting and closes the connection
            impatient.send(locates)

    wait_until(lambda: len(audit_rows(core, before)) == 64,
               "the cancelled request's audit records", timeout=8)
    stopped_after = time.monotonic() - began
    # Without CANCEL the core would run all 64 (its deadline is 10 s).
    assert_cancelled_in_audit(core, before)
    assert stopped_after < 8
    # The link stayed up: it was the request that stopped, not the link.
    assert gateway.links() == links
    with client(gateway) as kmip:
        succeeded(kmip, request(locate()))


# The gateway's own batches are bounded --------------------------------------------------------

def test_a_batch_over_the_gateways_max_batch_items_is_the_cores_to_judge(
        deployment: tuple[CoreProcess, GatewayProcess]) -> None:
    core, gateway = deployment
    over = GATEWAY_BATCH_ITEMS + 1
    before = last_seq(core)
    with client(gateway) as kmip:
        # Over the gateway's limit (4), within the core's (64): the core runs them, L4
        # items included, as the gateway would have.
        created = succeeded(kmip, request(*[create_l4()] * over))
        assert all(c.response_payload.unique_identifier.startswith("l4.") for c in created)
        succeeded(kmip, request(create_managed(), *[create_l4()] * GATEWAY_BATCH_ITEMS))
        succeeded(kmip, request(*[locate()] * over))
        # At the limit a local batch runs at the gateway: the core audits nothing of it.
        audited = len(audit_rows(core, before))
        succeeded(kmip, request(*[create_l4()] * GATEWAY_BATCH_ITEMS))
    assert len(audit_rows(core, before)) == audited == 3 * over


def test_a_request_of_thousands_of_items_is_refused_from_its_header(
        deployment: tuple[CoreProcess, GatewayProcess]) -> None:
    """A 1 MiB request holds about 20,000 small items. Judged after reading them, the
    limit let one such request hold a plane's reactor or the core's writer for a quarter
    of a second; both refuse it from the header and the first items' heads instead."""
    core, gateway = deployment
    before = last_seq(core)
    local = largest(lambda n: request(*[get("l4.x")] * n))
    remote = largest(lambda n: request(*[locate()] * n))
    assert len(local) > 1_000_000 and len(remote) > 1_000_000
    with client(gateway) as kmip:
        for wire in (local, remote):
            [refused] = response(kmip.send(wire)).batch_items
            assert (refused.result_reason, refused.result_message) == (
                ResultReason.INVALID_MESSAGE,
                "more than 64 batch items; at most 64 are accepted in one request")
        succeeded(kmip, request(locate()))
    assert [(r["operation"], r["result_reason"]) for r in audit_rows(core, before)] == [
        ("?", "INVALID_MESSAGE"), ("?", "INVALID_MESSAGE"), ("LOCATE", None)]


def test_a_request_of_more_fields_than_any_request_needs_is_refused_before_decoding(
        deployment: tuple[CoreProcess, GatewayProcess]) -> None:
    """A 1 MiB Create of 130,000 empty Comments (an L4 one, which the gateway would run):
    decoded, it would hold a plane's interpreter some 70 ms before the attribute limit
    refused it. Both planes judge it from its headers; the core refuses it, and audits."""
    core, gateway = deployment
    before = last_seq(core)
    empty = Attribute(Tag.COMMENT, Item(Tag.COMMENT, ItemType.TEXT_STRING, ""))
    l4 = create_l4().request_payload.attributes

    def create(count: int) -> bytes:
        return request(item(Operation.CREATE, CreateRequest(
            object_type=ObjectType.SYMMETRIC_KEY, attributes=[*l4, *[empty] * count])),
            version=(2, 1))

    wire = largest(create)
    assert len(wire) > 1_000_000
    for server in (gateway, core):
        with client(server) as kmip:
            [refused] = response(kmip.send(wire)).batch_items
            assert (refused.result_reason, refused.result_message) == (
                ResultReason.INVALID_MESSAGE,
                "request too large: more than 16384 fields; at most 16384 are accepted in "
                "one request")
            succeeded(kmip, request(create_l4()))
    assert [r["result_reason"] for r in audit_rows(core, before)
            if r["operation"] == "?"] == ["INVALID_MESSAGE"] * 2


# Values of the wrong type -------------------------------------------------------------------------

def wrongly_typed(tag: int, value_type: ItemType, value: object, *,
                  l4: bool = False) -> RequestBatchItem:
    """A Create (of an L4 when ``l4``) whose attribute ``tag`` has a value of ``value_type``."""
    wrong = Attribute(tag, Item(tag, value_type, value))
    attributes = [a for a in create_l4().request_payload.attributes if l4 or a.tag != VENDOR_TAG]
    attributes = [a for a in attributes if a.tag != tag] + [wrong]
    return item(Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                                attributes=attributes))


@pytest.mark.parametrize("version", [(1, 4), (2, 1)])
def test_an_attribute_value_of_the_wrong_type_is_invalid_field_and_stores_nothing(
        deployment: tuple[CoreProcess, GatewayProcess], version: tuple[int, int]) -> None:
    """Before, such values reached the operations: General Failure with a traceback in the
    log, or (a date as text, in SQLite) stored, after which every Locate and Get Attributes
    of that object failed."""
    core, gateway = deployment
    cases = [
        (wrongly_typed(Tag.ACTIVATION_DATE, ItemType.TEXT_STRING, "now"),
         "Activation Date must be of type Date Time"),
        (wrongly_typed(Tag.DEACTIVATION_DATE, ItemType.TEXT_STRING, "later"),
         "Deactivation Date must be of type Date Time"),
        (wrongly_typed(Tag.CRYPTOGRAPHIC_ALGORITHM, ItemType.TEXT_STRING, "AES", l4=True),
         "Cryptographic Algorithm must be of type Enumeration"),
        (wrongly_typed(Tag.ROTATE_OFFSET, ItemType.TEXT_STRING, "x"),
         "Rotate Offset must be of type Interval"),
    ]
    if version < (2, 0):
        cases.pop()  # (no Rotate Offset in 1.4)
    before = last_seq(core)
    for server in (gateway, core):
        with client(server) as kmip:
            for wrong, message in cases:
                [refused] = response(kmip.send(request(wrong, version=version))).batch_items
                assert (refused.result_status, refused.result_reason,
                        refused.result_message) == (
                    ResultStatus.OPERATION_FAILED, ResultReason.INVALID_FIELD, message)
            succeeded(kmip, request(locate(), version=version))
    records = [(r["operation"], r["result_reason"]) for r in audit_rows(core, before)]
    # The item fails alone, and its record names its operation (KMIP 1.4 §11.1).
    assert records == ([("CREATE", "INVALID_FIELD")] * len(cases) + [("LOCATE", None)]) * 2


# Network fuzzing --------------------------------------------------------------------------------

def fuzz_cases(rng: random.Random, l4_requests: list[tuple[str, bytes]], count: int
               ) -> Iterator[tuple[str, bytes]]:
    """``count`` malformed requests: each a base request (an OASIS vector, or an L4 or
    mixed request the gateway answers itself) with a malformed header or damaged bytes."""
    bases = list(base_requests()) + l4_requests * 10  # the gateway's own paths, often
    for _ in range(count):
        name, wire = rng.choice(bases)
        roll = rng.random()
        if roll < 0.2:
            shape = rng.choice(HEADER_SHAPES)
        elif roll < 0.3:
            shape = random_shape(rng)
        else:
            damage, damaged = mutate_bytes(wire, rng)
            yield f"{name}: {damage}", damaged
            continue
        try:
            yield f"{name}: {shape.__name__}", mutate(wire, shape)
        except (AssertionError, AttributeError):  # a base without that field: its bytes
            damage, damaged = mutate_bytes(wire, rng)
            yield f"{name}: {damage}", damaged


def log_problems(log: Path) -> list[str]:
    """The critical events and tracebacks in a JSON log."""
    problems = []
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            problems.append(line)  # not our logger's: twistd's own, e.g. a traceback
            continue
        if event.get("level") == "critical" or "traceback" in event:
            problems.append(event.get("text", line))
    return problems


def test_fuzzed_requests_leave_the_gateway_and_the_core_answering(
        deployment: tuple[CoreProcess, GatewayProcess]) -> None:
    core, gateway = deployment
    with client(gateway) as kmip:
        [created] = succeeded(kmip, request(create_l4()))
    token = created.response_payload.unique_identifier
    l4_requests = [
        ("l4 create", request(create_l4())),
        ("l4 encrypt", request(encrypt(token, b"a record"))),
        ("l4 get", request(get(token))),
        ("l4 batch", request(create_l4(), encrypt(None, b"r"), get(None))),
        ("mixed", request(create_l4(), locate(), encrypt(token, b"r"))),
        ("l4 2.0", request(encrypt(token, b"r"), version=(2, 0))),
    ]
    cases = list(fuzz_cases(random.Random(FUZZ_SEED), l4_requests, FUZZ_CASES))
    began = time.monotonic()
    answered = closed = 0
    fuzzer = client(gateway, timeout=10)
    try:
        for n, (name, wire) in enumerate(cases, 1):
            try:
                answer = fuzzer.send(wire)
            except KmipClientError:
                closed += 1  # the gateway may close a connection it cannot trust: reconnect
            else:
                assert decode(answer).tag == Tag.RESPONSE_MESSAGE, name
                answered += 1
            if n % CHECK_EVERY == 0 or n == len(cases):
                assert gateway.process.poll() is None and core.process.poll() is None, name
                with client(gateway) as normal:
                    succeeded(normal, request(locate()))  # forwarded to the core
                    succeeded(normal, request(encrypt(token, b"still here")))  # local
                with client(core) as direct:
                    succeeded(direct, request(locate()))
                assert log_problems(gateway.log) == [], f"after {name}"
    finally:
        fuzzer.close()
    took = time.monotonic() - began
    print(f"\nfuzz: {len(cases)} cases (seed {FUZZ_SEED}) in {took:.1f} s; {answered} "
          f"answered, {closed} connections closed by the gateway")
    assert answered >= len(cases) * 0.9
    assert log_problems(core.log) == []
