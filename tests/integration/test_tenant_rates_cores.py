"""Two real kcm-cores (twistd, real PKI, real KMIP clients) on one real PostgreSQL share
each tenant's request rate (kcm.core.core_presence, kcm.core.request_rates): a tenant of
rate R sending as fast as it can to both cores gets about R items a second in total, not
2R; a core killed is counted out within LIVE_S + ANNOUNCE_INTERVAL (20 s), and the one
left then allows the tenant its whole rate; a core stopped cleanly, at the others' next
announcement."""

from __future__ import annotations

import itertools
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from kcm.core.core_presence import ANNOUNCE_INTERVAL, LIVE_S
from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.testing.postgres import fresh_database
from kcm.testing.processes import deploy, free_port, scrape
from kcm.testing.requests import query, request, response
from tests.e2e_support import wait_until

RATE = 20
BURST = 4
V21 = (2, 1)
_databases = itertools.count()


def _live(core) -> float | None:
    found = re.search(r"^kcm_core_live_cores (\S+)$", scrape(core.metrics_port)[1].decode(),
                      re.M)
    return float(found.group(1)) if found else None


def _send_for(cores, seconds: float) -> tuple[list[int], list[str]]:
    """Query as fast as it is admitted, one client per core, for ``seconds``: the items
    each core served; anything but a success or a rate refusal, in ``failures``."""
    served = [0] * len(cores)
    failures: list[str] = []
    until = time.monotonic() + seconds

    def run(index: int) -> None:
        try:
            with cores[index].client("app") as client:
                while time.monotonic() < until:
                    answer = response(client.send(request(query(), version=V21))
                                      ).batch_items[0]
                    if answer.result_status == ResultStatus.SUCCESS:
                        served[index] += 1
                    elif answer.result_reason == ResultReason.SERVER_LIMIT_EXCEEDED:
                        time.sleep(0.005)
                    else:
                        failures.append(f"{answer.result_reason} {answer.result_message}")
        except Exception as e:  # noqa: BLE001
            failures.append(f"client {index}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return served, failures


@pytest.mark.long  # forty seconds or so
def test_two_cores_share_a_tenant_s_rate_and_count_a_core_gone_out(
        tmp_path: Path, postgres_url: str) -> None:
    url = fresh_database(postgres_url, f"kcm_rates_{next(_databases)}")
    first = deploy(tmp_path / "core1", url, requests_per_second_per_tenant=RATE,
                   request_burst_per_tenant=BURST)
    cores = [first, first.replica(tmp_path / "core2")]
    for core in cores:
        core.metrics_port = free_port()
        core.write_config()
    try:
        for core in cores:
            core.start()
        # The second counted both as it started; the first, at its next announcement.
        assert _live(cores[1]) == 2
        wait_until(lambda: _live(cores[0]) == 2, "both cores counted by the first",
                   timeout=ANNOUNCE_INTERVAL + 3, interval=0.2)

        seconds = 6.0
        served, failures = _send_for(cores, seconds)
        assert failures == []
        # R a second in total (each core R/2), plus the two buckets of BURST/2 they started
        # with: 124; 2R would be 240.
        assert RATE * seconds * 0.85 <= sum(served) <= RATE * seconds * 1.05 + BURST + 2, served
        assert all(abs(count - sum(served) / 2) <= RATE * seconds * 0.1 for count in served)

        # The second killed: counted out within LIVE_S + ANNOUNCE_INTERVAL, not before
        # LIVE_S - ANNOUNCE_INTERVAL (its last announcement was at most an interval ago).
        cores[1].stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: _live(cores[0]) == 1, "the killed core counted out",
                   timeout=LIVE_S + ANNOUNCE_INTERVAL + 3, interval=0.2)
        took = time.monotonic() - killed
        assert LIVE_S - ANNOUNCE_INTERVAL - 0.5 <= took <= LIVE_S + ANNOUNCE_INTERVAL + 1, took
        # ... and the one left allows the tenant its whole rate.
        served, failures = _send_for(cores[:1], 3.0)
        assert failures == []
        assert RATE * 3.0 * 0.85 <= served[0] <= RATE * 3.0 * 1.05 + BURST + 1, served

        # A core stopped cleanly is counted out at the other's next announcement.
        cores[1].start()
        assert _live(cores[1]) == 2
        wait_until(lambda: _live(cores[0]) == 2, "the core started again counted",
                   timeout=ANNOUNCE_INTERVAL + 3, interval=0.2)
        cores[1].stop()
        stopped = time.monotonic()
        wait_until(lambda: _live(cores[0]) == 1, "the stopped core counted out",
                   timeout=ANNOUNCE_INTERVAL + 3, interval=0.2)
        assert time.monotonic() - stopped <= ANNOUNCE_INTERVAL + 1
        assert "2 core(s) serve the database" in cores[0].log.read_text()
    finally:
        for core in cores:
            core.stop()
