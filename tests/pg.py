"""A throw-away PostgreSQL cluster for the tests (:mod:`kcm.testing.postgres`).

``postgres_url`` (session scope) runs Debian's PostgreSQL binaries
(``/usr/lib/postgresql/*/bin``, or ``$KCM_PG_BIN``) from a private temporary directory:
``initdb``, then a server on a free 127.0.0.1 port with its unix socket inside that directory,
``fsync`` on and password authentication, and yields a SQLAlchemy URL for database ``kcm``.
PostgreSQL refuses to run as root, so under root the cluster belongs to an unprivileged system
user (``kcm-pg``, created if missing). Everything is stopped and removed at the end.

Missing binaries (or psycopg) fail the run when ``$CI`` is set and skip the PostgreSQL tests
otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from kcm.testing.postgres import Cluster, find_pg_bin, running_cluster

__all__ = ["own_cluster", "postgres_url", "unavailable"]


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL for an empty database ``kcm`` on a private PostgreSQL cluster."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        unavailable(
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
            "(apt-get install postgresql-15, or set KCM_PG_BIN)"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed (pip install 'psycopg[binary]')")
    with running_cluster(bin_dir) as cluster:
        yield cluster.url


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of the test's own (to restart, stop or freeze), database ``kcm``
    created (``own_cluster.url``); stopped and removed afterwards."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        unavailable("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    with running_cluster(bin_dir) as cluster:
        yield cluster
