"""kcm.core.stream_parts: each Correlation Value is used once, over a real SQLite store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from kcm.core.store.schema import Base, SpentStreamPart
from kcm.core.stream_parts import PURGE_MARGIN, open_once, purge_spent, seal_part
from kcm.crypto.sealed_state import STREAM_LIFETIME
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError

SECRET = bytes(range(32))
PURPOSE = b"test stream "
NOW = 1_800_000_000


@dataclass
class Ctx:
    """What the module reads of an OperationContext."""

    session: Session
    now: int = NOW
    random_bytes: object = os.urandom
    audit_detail: dict[str, object] = field(default_factory=dict)


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


def _spent(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(SpentStreamPart)) or 0


def test_a_stream_is_one_chain_of_parts(session: Session) -> None:
    ctx = Ctx(session)
    first = seal_part(ctx, SECRET, PURPOSE, "uid", b"a", None)  # an Init's answer
    part, state = open_once(ctx, SECRET, PURPOSE, "uid", first, bytes)
    assert (part.part, state, part.expires) == (0, b"a", NOW + STREAM_LIFETIME)
    assert ctx.audit_detail["stream"] == f"{part.stream_id[:8].hex()}/0"
    second = seal_part(ctx, SECRET, PURPOSE, "uid", b"ab", part)
    following, state = open_once(ctx, SECRET, PURPOSE, "uid", second, bytes)
    assert (following.stream_id, following.part, state) == (part.stream_id, 1, b"ab")
    assert _spent(session) == 2


@pytest.mark.parametrize("commit", [False, True])
def test_a_value_used_again_is_refused(session: Session, commit: bool) -> None:
    ctx = Ctx(session)
    value = seal_part(ctx, SECRET, PURPOSE, "uid", b"state", None)
    open_once(ctx, SECRET, PURPOSE, "uid", value, bytes)
    if commit:
        session.commit()
    for _ in range(3):
        with pytest.raises(KmipError) as caught:
            open_once(ctx, SECRET, PURPOSE, "uid", value, bytes)
        assert caught.value.reason == ResultReason.INVALID_CORRELATION_VALUE
        assert caught.value.message == "the Correlation Value was used already; each is used once"
    assert _spent(session) == 1


def test_a_part_taken_by_an_item_that_failed_may_be_taken_again(session: Session) -> None:
    """The batch item's savepoint rolls the record back with everything else it did."""
    ctx = Ctx(session)
    value = seal_part(ctx, SECRET, PURPOSE, "uid", b"state", None)
    nested = session.begin_nested()
    open_once(ctx, SECRET, PURPOSE, "uid", value, bytes)
    nested.rollback()
    assert _spent(session) == 0
    open_once(ctx, SECRET, PURPOSE, "uid", value, bytes)


def test_an_expired_value_is_refused_and_forgotten_after_the_margin(session: Session) -> None:
    issued = Ctx(session)
    used = seal_part(issued, SECRET, PURPOSE, "uid", b"state", None)
    unused = seal_part(issued, SECRET, PURPOSE, "uid", b"state", None)
    open_once(issued, SECRET, PURPOSE, "uid", used, bytes)
    expires = NOW + STREAM_LIFETIME
    with pytest.raises(KmipError) as caught:
        open_once(Ctx(session, now=expires), SECRET, PURPOSE, "uid", unused, bytes)
    assert caught.value.message == "the Correlation Value has expired"
    assert purge_spent(session, expires + PURGE_MARGIN) == []
    assert _spent(session) == 1  # another core's clock may be behind: kept a while longer
    purge_spent(session, expires + PURGE_MARGIN + 1)
    assert _spent(session) == 0
