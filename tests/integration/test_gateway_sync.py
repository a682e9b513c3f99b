"""Gateways kept in step with the core, end to end: real `twistd kcm-core` and two real
`twistd kcm-gateway` processes (different ports, both linked), the development PKI's
certificates, mutual TLS on loopback.

* A revocation committed through gateway A is enforced by gateway B (and A) within 1 s of
  the core's commit (ARCHITECTURE §4): a non-compromise reason leaves the L3 Deactivated
  (decrypt-only), Key Compromise drops it; a destroyed L4 token is refused by both gateways
  and by the core.
* A gateway cut off from the core while changes commit applies them, in order, when its link
  comes back, without a restart (resume by sequence, docs/link-protocol.md §2).

Every request here is KMIP 2.1, so refusals carry 2.x reasons (Wrong Key Lifecycle State,
Object Not Found).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kcm.conformance.client import KmipClient
from kcm.kmip.enums import Operation, ResultReason, RevocationReasonCode
from kcm.kmip.messages import RequestBatchItem
from kcm.kmip.payloads.crypto import EncryptResponse
from kcm.kmip.payloads.lifecycle import DestroyRequest, RevocationReason, RevokeRequest
from kcm.l4 import token as l4_token
from kcm.testing.processes import free_port, scrape, start_together
from tests.e2e_support import (
    CoreProcess,
    GatewayProcess,
    applied_events,
    dead_links,
    decrypt_sealed,
    refusals,
    resumed_after,
    send_v21,
    succeeded_v21,
    wait_until,
)
from tests.gateway_support import create_l4, encrypt, get, item

#: The target of ARCHITECTURE §4: a revocation is enforced everywhere within 1 s of the commit.
PROPAGATION_BOUND = 1.0
POLL_INTERVAL = 0.02


@pytest.fixture
def gateways(core_process: CoreProcess, tmp_path: Path
             ) -> Iterator[tuple[CoreProcess, GatewayProcess, GatewayProcess]]:
    """The core and two gateways linked to it, each pre-warmed for demo/app."""
    a = GatewayProcess(tmp_path / "gateway-a", core_process)
    b = GatewayProcess(tmp_path / "gateway-b", core_process)
    try:
        start_together([a, b])
        a.wait_linked()
        b.wait_linked()
        yield core_process, a, b
    finally:
        for gateway in (a, b):
            if gateway.process is not None and gateway.process.poll() is None:
                gateway.process.send_signal(signal.SIGCONT)  # in case a test left it stopped
            gateway.stop()


# Requests ------------------------------------------------------------------------------------
def revoke(uid: str, code: RevocationReasonCode) -> RequestBatchItem:
    return item(Operation.REVOKE, RevokeRequest(unique_identifier=uid,
                                                revocation_reason=RevocationReason(code=code)))


def destroy(uid: str) -> RequestBatchItem:
    return item(Operation.DESTROY, DestroyRequest(unique_identifier=uid))


@dataclass
class Envelope:
    """An application's envelope encryption at a gateway: an L4 token under the demo/app L3,
    a record encrypted with it, and its DEK wrapped with the L3."""

    token: str
    l3: str
    dek: bytes
    record: EncryptResponse
    wrapped: EncryptResponse


def envelope(client: KmipClient) -> Envelope:
    [created] = succeeded_v21(client, create_l4())
    token = created.unique_identifier
    l3 = l4_token.parse(token).l3_uid
    [key, record] = succeeded_v21(client, get(token), encrypt(token, b"a customer record"))
    dek = key.object.key_block.key_value.key_material
    [wrapped] = succeeded_v21(client, encrypt(l3, dek))
    return Envelope(token, l3, dek, record, wrapped)


def enforced_within(clients: dict[str, KmipClient], probe: list[RequestBatchItem],
                    refused: list[ResultReason | None], since: float,
                    timeout: float = 5.0) -> dict[str, float]:
    """Send ``probe`` to every gateway every 20 ms until each answers with exactly the
    ``refused`` reasons; the seconds from ``since`` to each gateway's first such answer."""
    delays: dict[str, float] = {}
    last: dict[str, list] = {}
    while len(delays) < len(clients):
        for name, client in clients.items():
            if name in delays:
                continue
            answers = send_v21(client, *probe)
            last[name] = refusals(answers)
            if last[name] == refused:
                delays[name] = time.monotonic() - since
        if time.monotonic() - since > timeout:
            raise AssertionError(f"not enforced within {timeout:g}s: {last}")
        time.sleep(POLL_INTERVAL)
    return delays


def report(what: str, delays: dict[str, float], sent: float, answered: float) -> None:
    lead = answered - sent
    print(f"\n{what}: " + ", ".join(
        f"gateway {name} {(delay - lead) * 1000:.0f} ms after the core's answer "
        f"({delay * 1000:.0f} ms after the request)" for name, delay in sorted(delays.items())))


# Revocation reaches every gateway ---------------------------------------------------------
@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_a_deactivating_revoke_through_one_gateway_is_enforced_by_both_within_1s(
        gateways) -> None:
    _, a, b = gateways
    with a.client("admin") as admin, a.client("app") as app_a, b.client("app") as app_b:
        kept = envelope(app_b)
        succeeded_v21(app_a, encrypt(kept.l3, kept.dek), encrypt(kept.token))  # held at A too
        # Encrypt with the L3 and with its L4, Create of an L4 under it: what stops.
        probe = [encrypt(kept.l3, kept.dek), encrypt(kept.token, b"more"),
                 create_l4(via_link=kept.l3)]
        assert refusals(send_v21(app_b, *probe)) == [None, None, None]

        sent = time.monotonic()
        succeeded_v21(admin, revoke(kept.l3, RevocationReasonCode.CESSATION_OF_OPERATION))
        answered = time.monotonic()
        delays = enforced_within({"A": app_a, "B": app_b}, probe,
                                 [ResultReason.WRONG_KEY_LIFECYCLE_STATE] * 3, since=sent)
        report("L3 deactivation enforced", delays, sent, answered)
        assert max(delays.values()) < PROPAGATION_BOUND, delays

        # The service has no Active L3 left: a Create by marker is refused too.
        assert refusals(send_v21(app_b, create_l4())) == [ResultReason.WRONG_KEY_LIFECYCLE_STATE]
        # Decrypt-only: existing records and wrapped DEKs still open, the token still reads.
        for client in (app_a, app_b):
            opened, unwrapped, key = succeeded_v21(
                client, decrypt_sealed(kept.token, kept.record),
                decrypt_sealed(kept.l3, kept.wrapped), get(kept.token))
            assert opened.data == b"a customer record"
            assert unwrapped.data == kept.dek
            assert key.object.key_block.key_value.key_material == kept.dek


@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_a_key_compromise_revoke_drops_the_l3_at_both_gateways_within_1s(gateways) -> None:
    _, a, b = gateways
    with a.client("admin") as admin, a.client("app") as app_a, b.client("app") as app_b:
        kept = envelope(app_b)
        # Everything the L3 and its L4 were good for, decrypting included.
        probe = [encrypt(kept.l3, kept.dek), encrypt(kept.token, b"more"),
                 create_l4(via_link=kept.l3), decrypt_sealed(kept.token, kept.record),
                 decrypt_sealed(kept.l3, kept.wrapped), get(kept.token)]
        assert refusals(send_v21(app_a, *probe)) == [None] * len(probe)
        assert refusals(send_v21(app_b, *probe)) == [None] * len(probe)

        sent = time.monotonic()
        succeeded_v21(admin, revoke(kept.l3, RevocationReasonCode.KEY_COMPROMISE))
        answered = time.monotonic()
        delays = enforced_within({"A": app_a, "B": app_b}, probe,
                                 [ResultReason.WRONG_KEY_LIFECYCLE_STATE] * len(probe),
                                 since=sent)
        report("L3 compromise enforced", delays, sent, answered)
        assert max(delays.values()) < PROPAGATION_BOUND, delays
        [answer] = send_v21(app_b, decrypt_sealed(kept.token, kept.record))
        assert "compromised" in answer.result_message.lower()


@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_a_destroyed_l4_token_is_refused_by_both_gateways_within_1s_and_by_the_core(
        gateways) -> None:
    core, a, b = gateways
    with a.client("app") as app_a, b.client("app") as app_b:
        destroyed = envelope(app_b)
        other = envelope(app_b)  # another token under the same L3
        probe = [get(destroyed.token), encrypt(destroyed.token, b"more"),
                 decrypt_sealed(destroyed.token, destroyed.record)]
        assert refusals(send_v21(app_a, *probe)) == [None] * len(probe)

        sent = time.monotonic()
        succeeded_v21(app_a, destroy(destroyed.token))
        answered = time.monotonic()
        delays = enforced_within({"A": app_a, "B": app_b}, probe,
                                 [ResultReason.OBJECT_NOT_FOUND] * len(probe), since=sent)
        report("L4 destruction enforced", delays, sent, answered)
        assert max(delays.values()) < PROPAGATION_BOUND, delays
        with core.client("app") as direct:
            assert refusals(send_v21(direct, *probe)) == [ResultReason.OBJECT_NOT_FOUND] * 3
            [opened] = succeeded_v21(direct, decrypt_sealed(other.token, other.record))
        assert opened.data == b"a customer record"
        for client in (app_a, app_b):  # the tombstone names one token, not its L3
            [opened] = succeeded_v21(client, decrypt_sealed(other.token, other.record))
            assert opened.data == b"a customer record"


def test_a_gateway_that_relays_a_revocation_has_applied_it_before_its_next_item(
        gateways) -> None:
    """The core sends a request's events before its answer, so the gateway that relays a
    Revoke's or Destroy's Success refuses the key from its next batch item and its next
    request on, with no window (docs/link-protocol.md §3)."""
    _, a, _ = gateways
    with a.client("app") as app, a.client("admin") as admin:
        for _ in range(10):  # (a race: before, 1 in 3 to 1 in 5 was still served)
            kept = envelope(app)
            answers = send_v21(app, revoke(kept.token, RevocationReasonCode.KEY_COMPROMISE),
                               destroy(kept.token), encrypt(kept.token, b"more"),
                               get(kept.token))
            assert refusals(answers) == [None, None, ResultReason.OBJECT_NOT_FOUND,
                                         ResultReason.OBJECT_NOT_FOUND]
            kept = envelope(app)
            succeeded_v21(app, destroy(kept.token))
            assert refusals(send_v21(app, encrypt(kept.token, b"more"))) == [
                ResultReason.OBJECT_NOT_FOUND]
        kept = envelope(app)
        # An administrator's batch: the L3's compromise, then its L4 at the gateway.
        answers = send_v21(admin, revoke(kept.l3, RevocationReasonCode.KEY_COMPROMISE),
                           encrypt(kept.token, b"more"), get(kept.token))
        assert refusals(answers) == [None] + [ResultReason.WRONG_KEY_LIFECYCLE_STATE] * 2


# Catch-up after a disconnection --------------------------------------------------------------
def test_a_gateway_cut_off_while_changes_commit_applies_them_in_order_on_reconnect(
        gateways) -> None:
    """Gateway B is frozen with SIGSTOP: its process, its link's TCP connection and its
    in-memory state stay as they were, but it answers nothing. The core notices after three
    silent heartbeats and closes B's link (its log says the link is dead); only then are the
    changes committed, through gateway A, so the events cannot reach B over the old
    connection (nor sit in its socket buffer). After SIGCONT, B finds its link gone,
    reconnects by itself, sends HELLO with the last sequence it applied and receives the
    missed events from the outbox: its log shows the resume point and each missed event
    applied in sequence order, and it then refuses what was revoked and destroyed. The
    same process (same pid, one start-up) throughout: nothing was restarted."""
    core, a, b = gateways
    with b.client("app") as app_b:
        destroyed = envelope(app_b)
        kept = envelope(app_b)
    pid = b.process.pid
    before = applied_events(b)
    last_applied = resumed_after(b)[-1] if not before else before[-1][0]
    links, dead = b.links(), dead_links(core)

    b.process.send_signal(signal.SIGSTOP)
    try:
        waited = wait_until(lambda: dead_links(core) > dead, "the core to drop B's link")
        print(f"\nthe core dropped the frozen gateway's link after {waited:.1f} s")
        with a.client("app") as app_a, a.client("admin") as admin:
            succeeded_v21(app_a, destroy(destroyed.token))
            succeeded_v21(admin, revoke(kept.l3, RevocationReasonCode.CESSATION_OF_OPERATION))
        # A, still linked, applies both at once; B, frozen, cannot have.
        wait_until(lambda: [kind for _, kind in applied_events(a)][-2:]
                   == ["l4.tombstone", "l3.state"], "gateway A to apply both events", 5.0)
        missed = applied_events(a)[-2:]
    finally:
        b.process.send_signal(signal.SIGCONT)
    resumed = time.monotonic()

    b.wait_linked(more_than=links, timeout=15.0)
    wait_until(lambda: len(applied_events(b)) >= len(before) + 2,
               "gateway B to apply the missed events", 5.0)
    print(f"gateway B relinked and caught up {time.monotonic() - resumed:.2f} s after SIGCONT")
    assert resumed_after(b)[-1] == last_applied
    assert missed == [(last_applied + 1, "l4.tombstone"), (last_applied + 2, "l3.state")]
    assert applied_events(b)[len(before):] == missed
    assert b.process.pid == pid and b.process.poll() is None
    assert b.log.read_text().count("starting up") == 1

    with b.client("app") as app_b:
        assert refusals(send_v21(app_b, get(destroyed.token), encrypt(kept.l3, kept.dek),
                             encrypt(kept.token, b"more"))) == [
            ResultReason.OBJECT_NOT_FOUND, ResultReason.WRONG_KEY_LIFECYCLE_STATE,
            ResultReason.WRONG_KEY_LIFECYCLE_STATE]
        [opened] = succeeded_v21(app_b, decrypt_sealed(kept.token, kept.record))
        assert opened.data == b"a customer record"


# Bounded tombstones ---------------------------------------------------------------------------
def test_past_max_tombstones_the_core_answers_for_the_l3_and_nothing_revoked_comes_back(
        core_process: CoreProcess, tmp_path: Path) -> None:
    """A gateway that may hold one tombstone: the second destroyed token of the same L3
    makes it leave that L3's L4 requests to the core, which refuses both destroyed tokens
    and serves the live one; the metrics say so."""
    gateway = GatewayProcess(tmp_path / "gateway", core_process, metrics_port=free_port(),
                             settings={"max_tombstones": 1})
    gateway.start()
    try:
        gateway.wait_linked()
        with gateway.client("app") as app:
            first, second, live = envelope(app), envelope(app), envelope(app)
            for destroyed in (first, second):
                succeeded_v21(app, destroy(destroyed.token))
            wait_until(lambda: "are left to the core" in gateway.log.read_text(),
                       "the gateway to give up the L3's tombstones", timeout=5)
            for destroyed in (first, second):
                probe = [get(destroyed.token), decrypt_sealed(destroyed.token, destroyed.record)]
                assert refusals(send_v21(app, *probe)) == [ResultReason.OBJECT_NOT_FOUND] * 2
            [opened] = succeeded_v21(app, decrypt_sealed(live.token, live.record))
            assert opened.data == b"a customer record"
            [created] = succeeded_v21(app, create_l4())  # the L3 is still the current one
            succeeded_v21(app, encrypt(created.unique_identifier, b"more"))
        _, body = scrape(gateway.metrics_port)
        assert b"kcm_gateway_l3_tombstones_overflowed 1.0" in body
        assert b"kcm_gateway_l4_tombstones 0.0" in body
    finally:
        gateway.stop()
