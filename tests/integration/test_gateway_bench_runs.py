"""``benchmarks/gateway_bench.py`` runs end to end, with and without busy polling: its
forwarded scenarios, the bare TLS relay that is their floor included, answer every request
rightly; so do
``benchmarks/link_path_bench.py``, on both of kcm-core's paths, and
``benchmarks/forward_floor_bench.py``, on its five (its C relay built with OpenSSL's
headers, which .ci/run installs; its in-process relay really handing its connections to
the native thread, which the bench checks), with the gateway's and the relays' busy
polling on (``--busy-poll-us``); and ``benchmarks/workers_bench.py``, with pinned and
unpinned workers. The figures of these short runs mean little and are not
judged here; docs/benchmarks.md holds real ones."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kcm.testing.processes import process_env

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
@pytest.mark.parametrize("busy_poll", [[], ["--busy-poll-us", "700"]],
                         ids=["sleeping", "polling"])
def test_the_forwarded_scenarios_and_their_floor_run(busy_poll: list[str]) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gateway_bench.py"), "--quick",
         "--scenarios", "forward", *busy_poll],
        env=process_env(), capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "0 failed requests, 0 failed read-backs" in out
    # Every path answered all its Get Attributes: the gateway, the core, the relay.
    floor = out[out.index("Get Attributes, floor"):]
    for path in ("gateway", "core", "relay"):
        assert re.search(rf"^(Get Attributes, floor)?\s+{path}\s+100/100\s", floor, re.M), floor
    assert "a bare TLS relay on the gateway's transport" in floor
    if busy_poll:  # the gateway, the echo servers and the relay all poll
        assert "# busy_poll_us = 700: the gateway, the echo servers and the relay" in out


def test_the_link_path_bench_runs_both_paths() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "link_path_bench.py"), "--requests", "40",
         "--block", "20"],
        env=process_env(), capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for path in ("link", "direct"):
        assert re.search(rf"^{path}\s+p50 \d+\.\d+ ms", run.stdout, re.M), run.stdout
    assert "the link path minus the direct path" in run.stdout


def test_the_forward_floor_bench_runs_its_five_paths_polling_before_sleeping() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "forward_floor_bench.py"), "--requests",
         "30", "--rounds", "1", "--busy-poll-us", "700"],
        env=process_env(), capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(r"^round 1: core p50 \d+\.\d+ ms; gateway .*; relay .*; in-process .*; "
                     r"native ", run.stdout, re.M), run.stdout
    assert "0 failed answers" in run.stdout
    assert "# busy_poll_us = 700: the gateway and the Python relays poll" in run.stdout


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_the_workers_bench_runs_pinned_and_unpinned_workers() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "workers_bench.py"), "--quick",
         "--no-python-clients", "--also-unpinned"],
        env=process_env(), capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    # Every server answered every request of the C load generator's 8 clients rightly.
    for name in ("workers = 1", "workers = 2", "2, unpinned", "echo"):
        assert re.search(rf"^{re.escape(name)}\s+1600/1600\s", out, re.M), out
    assert "FAILURES" not in out
    assert re.search(r"^workers = 2 / workers = 1: \d+\.\d+x", out, re.M), out
    assert re.search(r"^workers = 2 with pin_workers = never / workers = 1: \d+\.\d+x", out,
                     re.M), out
