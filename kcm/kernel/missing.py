"""What a request that names no object of its caller is answered: the one "not found".

ARCHITECTURE §6: another tenant's object, token or L3 answers exactly as a missing one does
(same Result Reason, same message, same work). So the answer is made here from what the
client sent alone, never from what exists: Object Not Found (KMIP 2.x; the kernel says Item
Not Found to 1.x requests) and a message naming the identifier by a short ASCII label. A
client's identifier is never echoed whole: it may be long, hold any character, and an L4
token carries its sealed key.

Both planes use it: kcm-core for managed objects and service keys, the L4 engine for tokens
and L3s at the core and at every gateway.
"""

from __future__ import annotations

from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError

__all__ = ["identifier_label", "object_not_found", "wrapping_key_not_found"]

#: Characters of a client's identifier an answer repeats.
LABEL_LENGTH = 16


def identifier_label(uid: str) -> str:
    """``uid`` as answers name it: its first :data:`LABEL_LENGTH` characters (anything but
    printable ASCII as ``?``), and ``...`` when it is longer."""
    head = "".join(c if " " <= c <= "~" else "?" for c in uid[:LABEL_LENGTH])
    return head + ("..." if len(uid) > LABEL_LENGTH else "")


def object_not_found(uid: str) -> KmipError:
    """No object ``uid`` for this caller: missing, or another tenant's (the same answer)."""
    return KmipError(ResultReason.OBJECT_NOT_FOUND, f"no object {identifier_label(uid)}")


def wrapping_key_not_found(uid: str) -> KmipError:
    """No wrapping key ``uid`` for this caller (Key Wrapping Specification of a Get)."""
    return KmipError(ResultReason.WRAPPING_OBJECT_NOT_FOUND,
                     f"no wrapping key {identifier_label(uid)}")
