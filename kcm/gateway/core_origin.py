"""Which database a gateway follows: :class:`FollowedOrigin` (link version 7, ORIGIN).

A core of link version 7 names its database in ORIGIN: the deployment id every copy of the
database shares, and its restore generation, which ``kcm core init --restored`` raises on a
restored copy (:mod:`kcm.core.lineage`). The gateway remembers the deployment and the
highest generation that welcomed it, in memory (a restarted gateway takes the first core it
reaches), and judges each core's ORIGIN by them:

* the first one seen is followed;
* the same deployment at the same generation, or a higher one (the database was restored
  and this core serves the copy: the gateway follows it from then on, and resynchronises);
* a lower generation (a core still running on the database the copy was made from), or
  another deployment (a core of another database altogether), is refused: the gateway
  closes that link (GOAWAY naming the reason), and its next attempt goes to the next core.

Cores of link version 6 or earlier send no ORIGIN and are linked as before.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ANOTHER_DEPLOYMENT", "OLDER_COPY", "REASONS", "FollowedOrigin", "Origin"]

#: The reasons a core's ORIGIN is refused (the labels of the refusals metric).
OLDER_COPY = "older_copy"
ANOTHER_DEPLOYMENT = "another_deployment"
REASONS = (OLDER_COPY, ANOTHER_DEPLOYMENT)
#: Cores whose refusal was logged, remembered at most (emptied when full).
_MAX_LOGGED = 64
#: Characters of a deployment id a log line shows at most (a core's is 32 hex digits).
_SHOWN = 40


@dataclass(frozen=True, slots=True)
class Origin:
    """A core's database, as its ORIGIN names it."""

    deployment: str
    generation: int

    def __str__(self) -> str:
        shown = "".join(c if " " < c <= "~" else "?" for c in self.deployment[:_SHOWN])
        return f"deployment {shown}, restore generation {self.generation}"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a core's ORIGIN is refused: ``reason`` (one of :data:`REASONS`), the GOAWAY's
    short ASCII ``message`` and, for the log, what an operator should look for (``hint``)."""

    reason: str
    message: str
    hint: str


class FollowedOrigin:
    """The database this gateway follows, and the cores it refused for serving another."""

    def __init__(self) -> None:
        #: The deployment and the highest restore generation that welcomed this gateway
        #: (None: no core of link version 7 has yet).
        self.origin: Origin | None = None
        #: Links refused since the start, by reason.
        self.refusals: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._logged: set[str] = set()

    def judge(self, origin: Origin) -> Refusal | None:
        """Why a core whose ORIGIN is ``origin`` is not to be linked (counted); None when
        it may be."""
        known = self.origin
        if known is None or (origin.deployment == known.deployment
                             and origin.generation >= known.generation):
            return None
        if origin.deployment != known.deployment:
            # (A copy restored from a backup taken before deployment ids were written is
            # given the id its L1 key gives, the original's unless L1 was rotated since.)
            refusal = Refusal(ANOTHER_DEPLOYMENT, "another deployment",
                              "is this core of another database, or was its database "
                              "restored from a backup older than its deployment id (then "
                              "restart this gateway)?")
        else:
            refusal = Refusal(OLDER_COPY, f"older copy of the database (generation "
                                          f"{origin.generation} < {known.generation})",
                              "is a core still running on the old database?")
        self.refusals[refusal.reason] += 1
        return refusal

    def follow(self, origin: Origin) -> Origin | None:
        """A core whose ORIGIN is ``origin`` (one :meth:`judge` let through) welcomed this
        gateway: followed from now on. The origin followed until now when ``origin`` is a
        later generation of it (a restored copy: what was learnt from the other is to be
        dropped), else None."""
        before, self.origin = self.origin, origin
        if before is not None and origin.generation > before.generation:
            return before
        return None

    def first_refusal(self, core: str) -> bool:
        """Whether a refusal of ``core`` is to be logged: the first since this gateway
        last linked to it."""
        if core in self._logged:
            return False
        if len(self._logged) >= _MAX_LOGGED:
            self._logged.clear()
        self._logged.add(core)
        return True

    def linked(self, core: str) -> None:
        """This gateway linked to ``core``: its next refusal is logged again."""
        self._logged.discard(core)
