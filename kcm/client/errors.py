"""What the client raises: a KMIP failure answer, a connection that failed, an envelope
that cannot be opened, a data key the gateway refuses.

A failed batch item is :class:`KmipOperationFailed`, carrying its Result Status, Result
Reason and Result Message; everything about the connection (cannot connect, broke, timed out,
not KMIP) is :class:`KmipClientError` (a ``ConnectionError``). The envelope's errors are
:class:`EnvelopeError` (malformed, tampered or not authentic) and its subclass
:class:`DataKeyRefused` (the gateway would not give the data key: revoked, destroyed, not
this application's, or not a token at all).
"""

from __future__ import annotations

from kcm.conformance.client import KmipClientError
from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.labels import enum_label

__all__ = ["DataKeyRefused", "EnvelopeError", "KmipClientError", "KmipOperationFailed"]


class KmipOperationFailed(Exception):
    """The server answered a request with a failed batch item."""

    def __init__(self, operation: Operation | int | None, status: ResultStatus | int,
                 reason: ResultReason | int | None, message: str | None) -> None:
        self.operation = operation
        self.status = status
        self.reason = reason
        self.message = message or ""
        super().__init__(f"{enum_label(ResultReason, reason)}: {self.message}")


class EnvelopeError(Exception):
    """An envelope blob cannot be opened: malformed, of an unknown version or algorithm,
    naming a key that is not an L4 data key, or not authentic (tampered header, body, token
    or associated data, or the wrong key)."""


class DataKeyRefused(EnvelopeError):
    """The gateway refused the data key (L4) a blob names: it was revoked or destroyed, is
    not the caller's, or the token is not one. ``cause`` is the server's answer. A General
    Failure is no refusal of the key (the gateway cannot serve now): it is raised as the
    :class:`KmipOperationFailed` it is."""

    def __init__(self, token: str, cause: KmipOperationFailed) -> None:
        self.token = token
        self.cause = cause
        short = token if len(token) <= 40 else token[:37] + "..."
        super().__init__(f"the gateway refused data key {short}: {cause}")
