"""A real kcm-core on SQLite whose database a test changes behind its back, and what the
core then answers and counts (tests/integration/test_wrap_binding_process.py,
test_row_mac_process.py)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.testing.processes import CoreProcess, free_port, scrape
from tests.e2e_support import deploy


def core_db(core: CoreProcess) -> sqlite3.Connection:
    """A connection to ``core``'s SQLite file."""
    return sqlite3.connect(core.database.removeprefix("sqlite:///"), timeout=30)


def metric(core: CoreProcess, name: str) -> float | None:
    """``core``'s metric ``name`` (a series without labels) as scraped now; None if absent."""
    assert core.metrics_port is not None
    found = re.search(rf"^{name} (\S+)$", scrape(core.metrics_port)[1].decode(), re.M)
    return None if found is None else float(found.group(1))


def refused_integrity(answer) -> None:  # noqa: ANN001
    """``answer`` (a batch item) is the refusal of an object that failed its integrity check."""
    assert answer.result_status == ResultStatus.OPERATION_FAILED
    assert answer.result_reason == ResultReason.GENERAL_FAILURE, answer.result_message
    assert re.fullmatch(r"the stored object failed its integrity check \(correlation id "
                        r"[0-9a-f-]+\)", answer.result_message), answer.result_message


def core_with_metrics(tmp_path: Path, **settings: object) -> CoreProcess:
    """A kcm-core deployed on SQLite (not started) with metrics, sweeps every 0.5 s, and
    ``settings`` added to its ``[core]``."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.metrics_port = free_port()
    core.state_sweep_interval = 0.5
    core.write_config()
    set_core(core, **settings)
    return core


def set_core(core: CoreProcess, **settings: object) -> None:
    """``[core]`` settings added to the configuration written."""
    lines = "".join(f"{name} = {str(value).lower()}\n" for name, value in settings.items())
    core.config.write_text(core.config.read_text().replace("[core]\n", "[core]\n" + lines, 1))
