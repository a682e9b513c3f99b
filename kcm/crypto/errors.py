"""The refusals the cipher modules share, as KMIP errors (pure, no I/O).

Each is raised with its KMIP 2.x Result Reason; the kernel answers a 1.x request with the
stand-in (:mod:`kcm.kernel.result_reasons`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError

__all__ = ["cryptographic_failure", "unsupported"]


def unsupported(message: str) -> KmipError:
    """Parameters this server cannot run: Unsupported Cryptographic Parameters."""
    return KmipError(ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS, message)


@contextmanager
def cryptographic_failure(*also: type[Exception]) -> Iterator[None]:
    """The library refuses what we did not check ourselves (a key of the wrong length for
    its algorithm, data too long for the key): that is the request's Cryptographic Failure,
    not ours. ``ValueError`` is such a refusal, and the exception types in ``also``."""
    try:
        yield
    except (ValueError, *also) as e:
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE, str(e)) from None
