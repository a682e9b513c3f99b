"""The one error of the KMIP layer: a Result Reason and a message for a failed batch item."""

from __future__ import annotations

from kcm.kmip.enums import ResultReason


class KmipError(Exception):
    """Raised while decoding a request or executing an operation.

    One place (the server kernel's batch loop, :mod:`kcm.kernel.batch`) turns it into a
    failed batch item with ``reason`` as Result Reason and ``message`` as Result Message.
    A structurally wrong request raises it with ``INVALID_MESSAGE`` (a required field is
    missing) or ``INVALID_FIELD`` (a field has the wrong type, repeats, or is unexpected).

    ``reason`` is said in the newest protocol's words (KMIP 2.1). Where a request of an
    older version must be answered with another reason, the kernel's
    :func:`kcm.kernel.result_reasons.reason_in` finds it; ``v1_reason`` names the KMIP 1.x
    answer where this error's context needs another one than that function's default.
    """

    def __init__(self, reason: ResultReason, message: str, *,
                 v1_reason: ResultReason | None = None) -> None:
        super().__init__(f"{reason.name}: {message}")
        self.reason = reason
        self.message = message
        self.v1_reason = v1_reason
