"""The one error of the KMIP layer: a Result Reason and a message for a failed batch item."""

from __future__ import annotations

from kcm.kmip.enums import ResultReason


class KmipError(Exception):
    """Raised while decoding a request or executing an operation.

    One place (the server's batch loop) turns it into a failed batch item with
    ``reason`` as Result Reason and ``message`` as Result Message. A structurally
    wrong request raises it with ``INVALID_MESSAGE`` (a required field is missing)
    or ``INVALID_FIELD`` (a field has the wrong type, repeats, or is unexpected).
    """

    def __init__(self, reason: ResultReason, message: str) -> None:
        super().__init__(f"{reason.name}: {message}")
        self.reason = reason
        self.message = message
