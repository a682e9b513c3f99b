"""Suite-wide fixtures. The KMIP vectors must be present: missing vectors fail, never skip.

The whole suite runs with the strict version check (``KCM_STRICT_VERSIONS=1``, set before
any kcm module is imported and inherited by the kcm-core and kcm-gateway processes the
tests start): an answer carrying what its protocol version does not define is an error
(:mod:`kcm.kernel.version_fit`).
"""

from __future__ import annotations

import os

os.environ["KCM_STRICT_VERSIONS"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.core_support import core  # noqa: F401, E402  (an in-process kcm-core handler)
from tests.e2e_support import (  # noqa: F401, E402  (real twistd processes)
    core_process,
    core_process_pg,
    core_process_with_metrics,
    gateway_process,
)
from tests.pg import postgres_url  # noqa: F401, E402  (a real PostgreSQL cluster, per session)
from tests.softhsm import softhsm  # noqa: F401, E402  (a fresh SoftHSM2 token, per test)
from tests.vectors import vectors_dir  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run long tests first: modules with a test marked ``long``, then the other
    integration modules (real processes), then the unit and conformance modules. Under
    pytest-xdist's worksteal, a worker that runs out takes tests from the end of another's
    queue: ending on short tests keeps both workers busy to the end, where a long test
    scheduled last would keep one waiting for the other. A module's tests stay together
    (its fixtures are made once) and in their order."""
    rank: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        first = 0 if item.get_closest_marker("long") else (
            1 if module.startswith("tests/integration/") else 2)
        rank[module] = min(rank.get(module, first), first)
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The read-only OASIS KMIP vectors directory (fails loudly when missing)."""
    return vectors_dir()
