"""A gateway refuses a core on an older copy of the database (link version 7, ORIGIN).

Two cores on two SQLite copies of one database, the second marked a restored copy (`kcm
core init --restored`: restore generation 1), both still running, which operators must
never let happen (docs/operations.md, "Backup and restore"); one gateway lists both, the
original first (``core_order = "listed"``). It links to the original (the first core it
reaches), moves to the copy's core when the original stops (a higher generation:
followed, the keys held dropped), and from then on refuses the original, restarted, each
time its attempts reach it: GOAWAY `older copy of the database (generation 0 < 1)`, logged
once, counted, a failed attempt of that core, so that it links to the copy's core again
as soon as that one is back.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from kcm.testing.processes import free_port, scrape, start_together
from tests.e2e_support import GatewayProcess, deploy, succeeded_v21, wait_until
from tests.gateway_support import create_l4

REFUSED = "older copy of the database (generation 0 < 1)"
#: What the original's core logs of each link the gateway refuses.
WENT_AWAY = f"went away: {REFUSED}"
_LINKED = re.compile(r"linked to core \S+ at 127\.0\.0\.1:(\d+);")


def linked_ports(gateway: GatewayProcess) -> list[int]:
    """The link port of the core of each link the gateway made, in order (from its log)."""
    return [int(port) for port in _LINKED.findall(gateway.log.read_text())]


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_a_gateway_refuses_the_core_of_an_older_copy_and_keeps_to_the_restored_one(
        tmp_path: Path) -> None:
    original = deploy(tmp_path / "original", f"sqlite:///{tmp_path / 'original' / 'kcm.db'}")
    restored = original.replica(tmp_path / "restored")
    shutil.copy2(tmp_path / "original" / "kcm.db", tmp_path / "restored" / "kcm.db")
    restored.database = f"sqlite:///{tmp_path / 'restored' / 'kcm.db'}"
    restored.write_config()
    assert "restore generation 1 (raised" in restored.kcm("core", "init", "--restored").stdout
    gateway = GatewayProcess(tmp_path / "gw", original, cores=[original, restored])
    gateway.metrics_port = free_port()
    try:
        start_together([original, restored])
        gateway.start()
        gateway.wait_linked()
        assert linked_ports(gateway) == [original.link_port]  # (generation 0: followed)

        original.stop()  # DRAIN: the gateway moves to the next core, the copy's
        gateway.wait_linked(more_than=1)
        assert linked_ports(gateway) == [original.link_port, restored.link_port]
        assert "is a restored copy (deployment" in gateway.log.read_text()

        original.start()  # (never do this)
        restored.stop()
        wait_until(lambda: WENT_AWAY in original.log.read_text(),
                   "the gateway refuses the original's core")
        refused_at = time.monotonic()
        wait_until(lambda: original.log.read_text().count(WENT_AWAY) >= 4,
                   "the gateway tries it again", timeout=15)
        assert time.monotonic() - refused_at >= 0.2  # (backing off: no spin)
        assert linked_ports(gateway)[-1] == restored.link_port  # never the original's
        log = gateway.log.read_text()
        assert log.count("refusing the link to core at") == 1, log  # once per core
        assert f"core at 127.0.0.1:{original.link_port}: {REFUSED}" in log
        _, metrics = scrape(gateway.metrics_port)
        assert re.search(rb'kcm_gateway_link_lineage_refusals_total\{reason="older_copy"\} '
                         rb"([3-9]|\d\d+)\.0", metrics), metrics
        assert b"kcm_gateway_link_up 0.0" in metrics

        restored.start()
        gateway.wait_linked(more_than=2, timeout=15)
        assert linked_ports(gateway) == [original.link_port, restored.link_port,
                                         restored.link_port]
        with gateway.client() as c:
            succeeded_v21(c, create_l4())
    finally:
        gateway.stop()
        original.stop()
        restored.stop()
