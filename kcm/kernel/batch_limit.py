"""A request over the batch-item limit, refused at the cost of its header.

``limits.max_batch_items`` bounds the items of one request, and so the work that a request
may ask for. Judging it after decoding the message would not bound that work: a request of
the maximum size (1 MiB) holds tens of thousands of small items, and reading them all takes
a plane a quarter of a second. :func:`over_batch_limit` reads the header and the heads of at
most ``maximum + 1`` items (:func:`kcm.ttlv.peek.peek_request_head`), so kcm-core and
kcm-gateway refuse such a request, in the same words, before any item is read: Unsupported
Protocol Version when its version is not one KCM speaks (what the header says first), else
Invalid Field for an item that is not a Batch Item among those counted, else Invalid
Message (:func:`kcm.kmip.messages.too_many_batch_items`).
"""

from __future__ import annotations

from kcm.kernel.versions import answer_version, is_supported
from kcm.kmip.enums import ResultReason
from kcm.kmip.labels import tag_label
from kcm.kmip.messages import too_many_batch_items
from kcm.kmip.versions import Version
from kcm.ttlv.errors import TtlvError
from kcm.ttlv.peek import peek_request_head

__all__ = ["over_batch_limit"]


def over_batch_limit(wire: bytes, maximum: int) -> tuple[Version, int, str] | None:
    """(version to answer in, Result Reason, Result Message) refusing ``wire`` when it holds
    more than ``maximum`` items after its header; None when it holds no more, or when its
    header or those items' heads cannot be read (its decoder then says what is wrong)."""
    try:
        head = peek_request_head(wire, max_items=maximum)
    except TtlvError:
        return None
    if head.items <= maximum:
        return None
    version = head.version
    answer_in = answer_version(version)
    if not is_supported(version):
        return (answer_in, ResultReason.UNSUPPORTED_PROTOCOL_VERSION,
                f"protocol version {version[0]}.{version[1]} is not supported")
    if head.stranger is not None:
        return (answer_in, ResultReason.INVALID_FIELD,
                f"unexpected field {tag_label(head.stranger)} in Request Message")
    return answer_in, ResultReason.INVALID_MESSAGE, too_many_batch_items(None, maximum)
