"""``benchmarks/soak_bench.py`` runs end to end for about 20 seconds: its clients' answers are
all right, its five events run (an event every 3 s), and it prints its samples and the slope
of each series. The figures of so short a run mean nothing and are not judged here;
docs/benchmarks.md holds a long run's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kcm.testing.processes import process_env

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_the_soak_bench_runs_and_prints_its_table() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak_bench.py"), "--minutes", "0.33",
         "--sample", "3", "--event-interval", "3", "--warmup", "0", "--retention", "5"],
        env=process_env(), capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    header = next(line for line in out.splitlines() if line.split()[:3] == ["t", "requests",
                                                                         "rss"])
    assert "fds core" in header and "wal MB" in header and "outbox" in header, header
    rows = re.findall(r"^\s+\d+\.\d\s+\d+\s+\d+\.\d\s", out, re.M)
    assert len(rows) >= 5, out
    for what in ("SIGHUP to kcm-core", "TLS files rewritten", "service rotate demo app: exit 0",
                 "SIGKILL to gateway worker 1 (pid", "SIGHUP to the gateway supervisor"):
        assert what in out, out
    for series in ("rss core", "fds w1", "thr sup", "wal MB", "outbox"):
        assert re.search(rf"^{re.escape(series)}\s", out, re.M), out
    assert re.search(r"^\d+ requests in \d+ s \(\d+/s\), \d+ cut .*, 0 wrong answers$", out,
                     re.M), out
    assert "growing series (not stored by design): " in out
