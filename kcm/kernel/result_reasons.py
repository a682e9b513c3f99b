"""The one place where a Result Reason becomes the word of the request's protocol version.

Operations, the L4 engine and the L3 sources raise :class:`~kcm.kmip.errors.KmipError` with
the reason KMIP 2.1 defines. KMIP 1.x (and for two reasons 2.0) has no such reasons; the
OASIS test cases and the 1.4 error tables (KMIP 1.4 §11) show what an older server answers
instead. :func:`reason_in` is applied where a failed batch item is built
(:mod:`kcm.kernel.responses`), and nowhere else.
"""

from __future__ import annotations

from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.versions import Version

__all__ = ["reason_in", "error_reason"]

_R = ResultReason

#: reason -> (the first protocol version that answers it, what earlier versions answer).
_STAND_INS: dict[int, tuple[Version, ResultReason]] = {
    _R.OBJECT_NOT_FOUND: ((2, 0), _R.ITEM_NOT_FOUND),
    # KMIP 1.1 test case 3.1.4: a Get of a destroyed key is Item Not Found.
    _R.OBJECT_DESTROYED: ((2, 0), _R.ITEM_NOT_FOUND),
    # The 2.0 test cases still answer a missing or destroyed wrapping key Item Not Found.
    _R.WRAPPING_OBJECT_NOT_FOUND: ((2, 1), _R.ITEM_NOT_FOUND),
    _R.WRAPPING_OBJECT_DESTROYED: ((2, 1), _R.ITEM_NOT_FOUND),
    # The OASIS 1.x cases expect Permission Denied for a state that forbids the operation,
    # and for a key whose Cryptographic Usage Mask forbids it (CS-AC-M-8).
    _R.WRONG_KEY_LIFECYCLE_STATE: ((2, 0), _R.PERMISSION_DENIED),
    _R.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK: ((2, 0), _R.PERMISSION_DENIED),
    _R.USAGE_LIMIT_EXCEEDED: ((2, 0), _R.PERMISSION_DENIED),
    _R.ATTRIBUTE_READ_ONLY: ((2, 0), _R.PERMISSION_DENIED),
    _R.ATTRIBUTE_SINGLE_VALUED: ((2, 0), _R.INVALID_FIELD),
    _R.NON_UNIQUE_NAME_ATTRIBUTE: ((2, 0), _R.ILLEGAL_OPERATION),
    _R.INVALID_OBJECT_TYPE: ((2, 0), _R.INVALID_FIELD),
    _R.INVALID_CORRELATION_VALUE: ((2, 0), _R.INVALID_FIELD),
    _R.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS: ((2, 0), _R.FEATURE_NOT_SUPPORTED),
    _R.SERVER_LIMIT_EXCEEDED: ((2, 0), _R.FEATURE_NOT_SUPPORTED),
    # KMIP 1.4 §11: a critical Message Extension the server does not support.
    _R.UNKNOWN_MESSAGE_EXTENSION: ((2, 0), _R.FEATURE_NOT_SUPPORTED),
    # KMIP 1.x has only Invalid Message for a version it cannot speak.
    _R.UNSUPPORTED_PROTOCOL_VERSION: ((2, 0), _R.INVALID_MESSAGE),
    # The other 2.x reasons the server gives, in the 1.x reason of the same kind.
    _R.ATTRIBUTE_NOT_FOUND: ((2, 0), _R.ITEM_NOT_FOUND),
    _R.ATTRIBUTE_INSTANCE_NOT_FOUND: ((2, 0), _R.ITEM_NOT_FOUND),
    _R.MULTI_VALUED_ATTRIBUTE: ((2, 0), _R.INVALID_FIELD),
    _R.INVALID_DATA_TYPE: ((2, 0), _R.INVALID_FIELD),
    _R.NUMERIC_RANGE: ((2, 0), _R.INVALID_FIELD),
    _R.UNKNOWN_ENUMERATION: ((2, 0), _R.INVALID_FIELD),
    # Reasons later 1.x versions added (their history is kcm.kmip.registry's): what the
    # versions before them answer.
    _R.SENSITIVE: ((1, 4), _R.PERMISSION_DENIED),
    _R.NOT_EXTRACTABLE: ((1, 4), _R.PERMISSION_DENIED),
    _R.KEY_VALUE_NOT_PRESENT: ((1, 2), _R.ITEM_NOT_FOUND),
    _R.ENCODING_OPTION_ERROR: ((1, 1), _R.INVALID_FIELD),
}


def reason_in(version: Version, reason: int, v1_reason: int | None = None) -> int:
    """``reason`` as a server speaking ``version`` says it: in KMIP 1.x ``v1_reason`` when
    the context names one; else ``reason`` itself from the version that defines it on, and
    the usual stand-in before."""
    if v1_reason is not None and version < (2, 0):
        return v1_reason
    stand_in = _STAND_INS.get(reason)
    if stand_in is None or version >= stand_in[0]:
        return reason
    return stand_in[1]


def error_reason(version: Version, error: KmipError) -> int:
    """The Result Reason that answers ``error`` in ``version``."""
    return reason_in(version, error.reason, error.v1_reason)
