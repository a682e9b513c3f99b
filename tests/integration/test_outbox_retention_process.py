"""The outbox is pruned in a running kcm-core (``outbox_retention``, here 1 s), and its
gateways are none the worse: one linked all along applies every event, and one away while
events it had not applied were deleted relinks, resynchronises once (its first event is
beyond the one it expects) and answers as the core does, the L4 destroyed while it was away
included. It used to take the missing events for a gap and reconnect, for ever, serving that
L4 from what it cached."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from kcm.kmip.enums import Operation
from kcm.kmip.payloads.lifecycle import DestroyRequest
from tests.core_support import swept_core
from tests.e2e_support import (
    GatewayProcess,
    applied_events,
    dead_links,
    refusals,
    send_v21,
    succeeded_v21,
    wait_until,
)
from tests.gateway_support import create_l4, encrypt, item


def _outbox(db: Path) -> tuple[int, int]:
    """(how many events the outbox keeps, the newest's number)."""
    with sqlite3.connect(db) as connection:
        count, head = connection.execute("SELECT count(*), max(seq) FROM outbox").fetchone()
    return count, head


def _destroy(uid: str) -> object:
    return item(Operation.DESTROY, DestroyRequest(unique_identifier=uid))


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_a_pruned_outbox_keeps_linked_gateways_working_and_relinking_ones_resync(
        tmp_path: Path) -> None:
    core = swept_core(tmp_path / "core", "outbox_retention = 1")
    db = tmp_path / "core" / "kcm.db"
    core.start()
    linked = GatewayProcess(tmp_path / "gw-linked", core)
    away = GatewayProcess(tmp_path / "gw-away", core)
    try:
        linked.start()
        away.start()
        linked.wait_linked()
        away.wait_linked()
        with away.client() as c:  # cached at the gateway that will be away
            [kept, doomed] = succeeded_v21(c, create_l4(), create_l4())
            assert refusals(send_v21(c, encrypt(doomed.unique_identifier))) == [None]
        # That gateway is away (a paused VM) until the core has given its link up.
        away.process.send_signal(signal.SIGSTOP)
        wait_until(lambda: dead_links(core) >= 1, "the core to drop the silent link")
        with core.client() as c:
            made = succeeded_v21(c, *[create_l4()] * 8)
            succeeded_v21(c, _destroy(doomed.unique_identifier),
                          *[_destroy(m.unique_identifier) for m in made])
        _, head = _outbox(db)
        wait_until(lambda: applied_events(linked) and applied_events(linked)[-1][0] >= head,
                   "the linked gateway to apply every event")
        # Every event is older than a second soon: all but the newest are deleted.
        wait_until(lambda: _outbox(db) == (1, head), "the outbox to be pruned", timeout=5)
        applied = [seq for seq, _ in applied_events(linked)]
        assert applied == list(range(applied[0], head + 1))  # none missed, none twice

        links = away.links()
        away.process.send_signal(signal.SIGCONT)
        away.wait_linked(more_than=links, timeout=15)
        wait_until(lambda: "(outbox_retention): resynchronising" in away.log.read_text(),
                   "the relinked gateway to resynchronise")
        wait_until(lambda: applied_events(away) and applied_events(away)[-1][0] == head,
                   "it applies the newest")  # (none may be in its log yet)
        assert "(outbox_retention): it resynchronises" in core.log.read_text()
        time.sleep(1.0)  # (it used to relink again and again)
        assert away.links() == links + 1
        assert "event gap" not in away.log.read_text()
        with core.client() as c:
            at_core = refusals(send_v21(c, encrypt(doomed.unique_identifier)))
        with away.client() as c:
            assert refusals(send_v21(c, encrypt(doomed.unique_identifier))) == at_core
            assert at_core != [None]
            assert refusals(send_v21(c, encrypt(kept.unique_identifier))) == [None]
            [fresh] = succeeded_v21(c, create_l4())
        # Both gateways follow the events made from now on.
        with core.client() as c:
            succeeded_v21(c, _destroy(fresh.unique_identifier))
        for gateway in (linked, away):
            wait_until(lambda gateway=gateway: applied_events(gateway)[-1][0] == head + 1,
                       "the gateways to apply the next event")
        assert "resynchronising" not in linked.log.read_text()
        assert away.log.read_text().count("resynchronising") == 1
        with away.client() as c:
            assert refusals(send_v21(c, encrypt(fresh.unique_identifier))) != [None]
    finally:
        if away.process is not None and away.process.poll() is None:
            away.process.send_signal(signal.SIGCONT)
        away.stop()
        linked.stop()
        core.stop()
