"""Play OASIS KMIP test-case files against a live server and judge each response.

A case file alternates request and response messages (KMIP Profiles 2.1 §5.4.1). Each step
sends one request, with the placeholders earlier responses bound substituted (see
:meth:`kcm.conformance.matcher.MatchState.substitute`), and matches the server's response
with :func:`kcm.conformance.matcher.match_response`. A case stops at its first failing step,
unless asked to play every step (``keep_going``: to see every difference, not only the first).

The 2.x cases open and close with an Interop request (Begin / End). Interop exists for test
harnesses and its use is optional, so a step whose request is Interop and whose response
fails with Operation Not Supported is recorded as skipped, not failed; any other answer to
Interop is judged like every other response.

:func:`select_cases` picks the mandatory test cases of the profiles KCM claims.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kcm.conformance.matcher import (
    DEFAULT_TOLERANCE,
    MatchState,
    UnboundPlaceholder,
    match_response,
    parse_case,
)
from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.tags import Tag
from kcm.kmip.xml_encoding import XmlEncodingError
from kcm.ttlv import TtlvError, decode, encode
from kcm.ttlv.types import Item, ItemType

__all__ = [
    "CASE_DIRECTORIES", "CaseResult", "MANDATORY_PATTERNS", "StepFailure", "Transport",
    "case_name", "run_case", "select_cases",
]

#: Where the OASIS profile test cases live under the vectors directory (``--case '*'``
#: plays all of them; the default patterns pick the mandatory ones).
CASE_DIRECTORIES: tuple[str, ...] = (
    "oasis-kmip-profiles-v1.4-os/mandatory",
    "oasis-kmip-profiles-v1.4-os/optional",
    "oasis-kmip-profiles-v2.1-os/mandatory",
    "oasis-kmip-profiles-v2.1-os/optional",
)

#: The mandatory cases of the profiles KCM claims: Baseline (2.1), Symmetric Key Lifecycle,
#: Symmetric Key Foundry, Basic Cryptographic, Advanced Cryptographic and RNG Cryptographic,
#: at KMIP 1.4 and 2.1. Shell patterns on the file name without ``.xml``.
MANDATORY_PATTERNS: tuple[str, ...] = (
    "BL-M-*-21",
    "SKLC-M-*-14", "SKLC-M-*-21",
    "SKFF-M-*-14", "SKFF-M-*-21",
    "CS-BC-M-*-14", "CS-BC-M-*-21",
    "CS-AC-M-*-14", "CS-AC-M-*-21",
    "CS-RNG-M-*-14", "CS-RNG-M-*-21",
)


class Transport(Protocol):
    """Sends one encoded request and returns the one encoded response."""

    def send(self, request: bytes) -> bytes: ...


@dataclass(frozen=True)
class StepFailure:
    """Why a step failed: its 1-based number and one line per finding."""

    step: int
    findings: tuple[str, ...]

    def summary(self) -> str:
        """``step N: <first finding>`` (and how many more)."""
        more = f" (and {len(self.findings) - 1} more)" if len(self.findings) > 1 else ""
        return f"step {self.step}: {self.findings[0]}{more}"


@dataclass
class CaseResult:
    """The verdict on one case file.

    ``steps`` is the number of request/response pairs the file holds, ``run`` how many were
    played, ``skipped`` the numbers of the Interop steps the server did not support,
    ``failure`` the first failing step (None when the case passed) and ``failures`` every
    failing step played (only the first, unless the case was run with ``keep_going``).
    """

    name: str
    path: Path
    steps: int
    run: int = 0
    skipped: list[int] = field(default_factory=list)
    failure: StepFailure | None = None
    failures: list[StepFailure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every step was played and matched (or was a permitted Interop skip)."""
        return self.failure is None and self.run == self.steps

    def line(self) -> str:
        """``PASS NAME`` or ``FAIL NAME step N: why``."""
        if self.failure is None:
            return f"PASS {self.name}"
        return f"FAIL {self.name} {self.failure.summary()}"


def case_name(path: Path) -> str:
    """A case's name: its file name without ``.xml`` (``SKLC-M-1-21``)."""
    return path.name.removesuffix(".xml")


def select_cases(vectors_dir: Path, patterns: Iterable[str] = MANDATORY_PATTERNS) -> list[Path]:
    """The case files under :data:`CASE_DIRECTORIES` whose name matches any of ``patterns``.

    Sorted by directory, then by name with numbers in numeric order. Raises
    ``FileNotFoundError`` when none of the directories exists.
    """
    patterns = tuple(patterns)
    directories = [vectors_dir / d for d in CASE_DIRECTORIES]
    if not any(d.is_dir() for d in directories):
        raise FileNotFoundError(f"no OASIS profile test cases under {vectors_dir}")
    selected = []
    for directory in directories:
        if not directory.is_dir():
            continue
        files = [p for p in directory.glob("*.xml")
                 if any(fnmatch.fnmatchcase(case_name(p), pattern) for pattern in patterns)]
        selected += sorted(files, key=_natural_key)
    return selected


def _natural_key(path: Path) -> list[tuple[int, str]]:
    # Numbers sort numerically and before words: SKFF-M-2 < SKFF-M-10 < CS-BC-M-GCM-1.
    return [(int(part), "") if part.isdigit() else (1 << 30, part)
            for part in case_name(path).split("-")]


def run_case(path: Path, client: Transport, *, now: int | None = None,
             tolerance: int = DEFAULT_TOLERANCE, keep_going: bool = False) -> CaseResult:
    """Play every request of the case file at ``path`` through ``client``, in order.

    ``now`` (POSIX seconds, default the current time) is what ``$NOW`` means; ``tolerance``
    how far server times may stray from it. Stops at the first failing step, or with
    ``keep_going`` plays every step (matching binds the placeholders of a failing step too).
    Connection errors, undecodable responses and unbound placeholders fail the step; they are
    not raised.
    """
    name = case_name(path)
    try:
        messages = parse_case(path.read_text(encoding="utf-8"))
    except (OSError, XmlEncodingError) as e:
        unreadable = StepFailure(0, (f"cannot read case: {e}",))
        return CaseResult(name, path, 0, failure=unreadable, failures=[unreadable])
    result = CaseResult(name, path, (len(messages) + 1) // 2)
    pairing = _pairing_error(messages)
    if pairing:
        result.failure = StepFailure(0, (pairing,))
        result.failures.append(result.failure)
        return result
    state = MatchState(now=int(time.time()) if now is None else now, tolerance=tolerance)
    for index in range(result.steps):
        step = index + 1
        request, expected = messages[2 * index], messages[2 * index + 1]
        findings = _play(step, request, expected, client, state, result)
        if findings:
            result.failures.append(StepFailure(step, tuple(findings)))
            if result.failure is None:
                result.failure = result.failures[0]
            if not keep_going:
                return result
        result.run = step
    return result


def _play(step: int, request: Item, expected: Item, client: Transport, state: MatchState,
          result: CaseResult) -> list[str]:
    try:
        concrete = state.substitute(request)
        wire = encode(concrete)
    except UnboundPlaceholder as e:
        return [f"request: {e}"]
    except (TypeError, ValueError) as e:
        return [f"request cannot be encoded: {e}"]
    try:
        response_bytes = client.send(wire)
    except (OSError, ConnectionError) as e:
        return [f"no response: {e}"]
    try:
        actual = decode(response_bytes)
    except TtlvError as e:
        return [f"response is not TTLV: {e}"]
    if _interop_not_supported(concrete, actual):
        result.skipped.append(step)
        return []
    return match_response(expected, actual, state, request=concrete)


def _pairing_error(messages: Sequence[Item]) -> str | None:
    if not messages:
        return "the case holds no messages"
    for index, message in enumerate(messages):
        want = Tag.REQUEST_MESSAGE if index % 2 == 0 else Tag.RESPONSE_MESSAGE
        if message.tag != want:
            kind = "request" if index % 2 == 0 else "response"
            return f"message {index + 1} should be a {kind} (requests and responses alternate)"
    if len(messages) % 2:
        return "the last request has no expected response"
    return None


def _interop_not_supported(request: Item, response: Item) -> bool:
    """Whether ``request`` is all Interop and the server refused each as not supported."""
    requests = _batch_items(request)
    responses = _batch_items(response)
    if not requests or len(requests) != len(responses):
        return False
    for sent, answer in zip(requests, responses, strict=True):
        operation = sent.find(Tag.OPERATION)
        status = answer.find(Tag.RESULT_STATUS)
        reason = answer.find(Tag.RESULT_REASON)
        if operation is None or operation.value != Operation.INTEROP:
            return False
        if status is None or status.value != ResultStatus.OPERATION_FAILED:
            return False
        if reason is None or reason.value != ResultReason.OPERATION_NOT_SUPPORTED:
            return False
    return True


def _batch_items(message: Item) -> list[Item]:
    if message.type is not ItemType.STRUCTURE:
        return []
    return [c for c in message.value  # type: ignore[union-attr]
            if c.tag == Tag.BATCH_ITEM and c.type is ItemType.STRUCTURE]
