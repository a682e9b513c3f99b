"""Suite-wide fixtures. The KMIP vectors must be present: missing vectors fail, never skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.core_support import core  # noqa: F401  (an in-process kcm-core handler)
from tests.e2e_support import (  # noqa: F401  (real twistd processes)
    core_process,
    core_process_pg,
    gateway_process,
)
from tests.pg import postgres_url  # noqa: F401  (a real PostgreSQL cluster, per session)
from tests.softhsm import softhsm  # noqa: F401  (a fresh SoftHSM2 token, per test)
from tests.vectors import vectors_dir


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The read-only OASIS KMIP vectors directory (fails loudly when missing)."""
    return vectors_dir()
