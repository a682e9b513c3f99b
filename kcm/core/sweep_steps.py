"""The further steps of the state sweeper's transaction (:mod:`kcm.core.state_sweeper`):
automatic rotation of service keys, managed keys and tenant keys, and the re-wrap after a
tenant key rotation (kcm-core's ``makeService`` lists them).

Each step is called with the sweep's session and time and returns what it did (logged
after the commit). Each runs in a savepoint of its own: one that raises is rolled back
alone and reported as :class:`StepFailed`, and the other steps, and the date-driven state
changes, still happen. An outcome whose ``more`` is true (a bounded batch that left work)
asks for the next sweep at once, in a transaction of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session
from twisted.logger import Logger

from kcm.core.audit import savepoint

__all__ = ["StepFailed", "SweepStep", "report", "run_steps", "wants_more"]

log = Logger()

#: ``step(session, now)``: what it did.
SweepStep = Callable[[Session, float], Sequence[object]]


@dataclass(frozen=True, slots=True)
class StepFailed:
    """A sweep step that raised: rolled back alone, reported, tried again next sweep."""

    step: str
    error: Exception

    def __str__(self) -> str:
        return f"step {self.step} failed and was rolled back: {self.error!r}"


def run_steps(session: Session, steps: Sequence[SweepStep], now: float) -> list[object]:
    """Run ``steps`` in order, each in a savepoint; what they did (and how any failed).
    The savepoints are the requests' (:func:`kcm.core.audit.savepoint`): one rolled back
    takes its audit records with it (the ORM's kept them, and they were logged with the
    commit though never written)."""
    done: list[object] = []
    for step in steps:
        try:
            with savepoint(session):
                done += step(session, now)
        except Exception as e:  # noqa: BLE001 - reported on the reactor (report)
            done.append(StepFailed(getattr(step, "__name__", repr(step)), e))
    return done


def wants_more(done: Sequence[object]) -> bool:
    """Whether a step left work for a sweep right away."""
    return any(getattr(outcome, "more", False) for outcome in done)


def report(done: Sequence[object]) -> None:
    """Log what the steps did (on the reactor, after the commit)."""
    for outcome in done:
        if isinstance(outcome, StepFailed):
            log.error("state sweep: {failed}", failed=str(outcome))
        else:
            log.info("state sweep: {done}", done=str(outcome))
