"""Local or forward: the gateway's one routing decision (ARCHITECTURE §2, link-protocol §3).

Decided from :func:`kcm.ttlv.peek.peek_request` alone; a request that is forwarded is
never decoded here, and a Create's attributes are decoded only when their bytes hold an L4
marker (:data:`kcm.l4.marking.MARKER_BYTES`). A batch item runs LOCAL when it is

* a Create whose attributes mark an L4 (:func:`kcm.l4.marking.is_l4_create` says what the
  markers are),
* a Get whose Unique Identifier is an L4 token (``l4.``),
* an Encrypt or Decrypt whose Unique Identifier is an L4 token or an L3 (``l3-``),
* a Get, Encrypt or Decrypt without a Unique Identifier (it means the ID Placeholder) when
  the placeholder was last set at the gateway: by a local Create (which sets it, as the
  core's L4 Create does; a Get, Encrypt or Decrypt sets none, at the gateway as at the
  core: KMIP 1.4 §4, 2.1 §6), with no remote item since;

everything else is REMOTE and goes to the core as it came. So does every item of a request
in a protocol version the gateway does not speak: version negotiation is the core's answer.

The ID Placeholder is one per request (KMIP 1.4 §4, 2.1 §6), and a mixed request's remote
runs reach the core as separate sub-requests. So a request that would be mixed, and in
which an item that may refer to the placeholder (one without a Unique Identifier, other
than an operation that takes none) comes after an item of the other plane, goes whole to
the core, which runs L4 items as the gateway does. A remote such item may mean a
placeholder set by a local item, or by a remote item of another run; a local one, a
placeholder set by a remote item before the local Create, when that failed (a failed item
sets none). A request whose local placeholder items follow only local items stays mixed: a
Create of an L4 and an Encrypt without an identifier, then remote items.

Most forwarded requests hold none of these four operations: :func:`may_run_here` says so
from a scan of the bytes for Operation items, without the peek, and such a request is
forwarded whole at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kcm.kernel.versions import is_supported
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import Operation
from kcm.kmip.versions import Version
from kcm.l4.engine import SETS_ID_PLACEHOLDER
from kcm.l4.identifiers import is_l3, is_l4
from kcm.l4.marking import MARKER_BYTES, create_attributes, is_l4_create
from kcm.ttlv.peek import OPERATION_HEAD, PeekedBatchItem, PeekedRequest, peek_request

__all__ = ["Classified", "Route", "classify", "may_run_here"]

_CREATE = int(Operation.CREATE)
_GET = int(Operation.GET)
_CRYPTO = (int(Operation.ENCRYPT), int(Operation.DECRYPT))
_USES_UID = (_GET, *_CRYPTO)
#: Operations whose request names no existing object: never the ID Placeholder.
_TAKES_NO_IDENTIFIER = frozenset(int(op) for op in (
    Operation.CREATE, Operation.CREATE_KEY_PAIR, Operation.REGISTER, Operation.LOCATE,
    Operation.QUERY, Operation.DISCOVER_VERSIONS, Operation.RNG_RETRIEVE,
    Operation.RNG_SEED, Operation.HASH, Operation.POLL, Operation.INTEROP, Operation.PING,
    Operation.LOG, Operation.LOGIN, Operation.LOGOUT))


#: The Operation values, as :func:`~kcm.ttlv.peek.operation_values` finds them, of the items
#: that may run here.
_LOCAL_VALUES = frozenset(op.to_bytes(4, "big") for op in (_CREATE, *_USES_UID))
#: Those items whole, as a well-formed request holds them (head, length 4, value).
_LOCAL_ITEMS = tuple(OPERATION_HEAD + b"\x00\x00\x00\x04" + value for value in _LOCAL_VALUES)


def may_run_here(wire: bytes, most: int | None = None) -> bool:
    """False only when ``wire`` has batch items and none can run here: it has Operation
    items, and none is a Create, Get, Encrypt or Decrypt (:func:`classify` would route it
    ALL_REMOTE, or find its routing facts unreadable, and either way it goes to the core
    whole). A string that looks like an Operation item can only make it True:
    :func:`classify` then decides (as it does for a request with no item at all).

    The values are those :func:`~kcm.ttlv.peek.operation_values` finds, read one by one: an
    L4 request is known at its first item, however many it has. ``most``: past that many
    values read one by one, the rest of ``wire`` is searched for a local Operation item
    whole, with the length a well-formed one has (one search per local operation, not one
    step per item: a request of thousands of remote items costs no more than one of
    ``most``). An item the peek would read as local with another length is malformed, and
    the core, which gets it, refuses it as the gateway's decoder would."""
    at = wire.find(OPERATION_HEAD)
    if at < 0:
        return True
    read = 0
    while at >= 0:
        if wire[at + 8:at + 12] in _LOCAL_VALUES:
            return True
        read += 1
        if most is not None and read > most:
            return any(wire.find(item, at) >= 0 for item in _LOCAL_ITEMS)
        at = wire.find(OPERATION_HEAD, at + 1)
    return False


class Route(enum.Enum):
    """Where a whole request goes."""

    ALL_LOCAL = "all-local"
    ALL_REMOTE = "all-remote"
    MIXED = "mixed"


@dataclass(frozen=True, slots=True)
class Classified:
    """A peeked request and, per batch item in wire order, whether it runs locally."""

    request: PeekedRequest
    local: tuple[bool, ...]
    route: Route
    #: Per batch item, the decoded attributes of a local (L4) Create, else None.
    create_attributes: tuple[list[Attribute] | None, ...] = ()


def classify(wire: bytes) -> Classified:
    """Classify one request message; raises TtlvError when its routing facts cannot be read
    (the caller answers Invalid Message)."""
    request = peek_request(wire, unique_identifier=True, create_attributes=True)
    if not is_supported(request.version):
        return Classified(request, (False,) * len(request.items), Route.ALL_REMOTE)
    local: list[bool] = []
    attributes: list[list[Attribute] | None] = []
    placeholder_is_local = False
    # An item may mean a placeholder set on the other plane: by a local item before a
    # remote run, or, for a local item, by a remote item when every local item that would
    # have replaced it since failed (a failed item sets none, KMIP 1.4 §4, 2.1 §6).
    placeholder_across = False
    seen = {True: False, False: False}  # whether a local (True) / remote item came before
    version = request.version
    for item in request.items:
        operation = item.operation
        marked = _l4_create_attributes(item, version) if operation == _CREATE else None
        here = marked is not None or (operation != _CREATE
                                      and _uses_local_key(item, placeholder_is_local))
        if (item.unique_identifier is None and operation not in _TAKES_NO_IDENTIFIER
                and seen[not here]):
            placeholder_across = True
        seen[here] = True
        if here:
            if operation in SETS_ID_PLACEHOLDER:
                placeholder_is_local = True
        else:
            # Any remote item may set the core's placeholder.
            placeholder_is_local = False
        local.append(here)
        attributes.append(marked)
    if all(local):
        route = Route.ALL_LOCAL
    elif any(local) and not placeholder_across:
        route = Route.MIXED
    else:
        route = Route.ALL_REMOTE
        local = [False] * len(local)
    return Classified(request, tuple(local), route, tuple(attributes))


def _l4_create_attributes(item: PeekedBatchItem, version: Version) -> list[Attribute] | None:
    """The attributes of an L4 Create, or None when the Create is not one."""
    if not any(item.attributes_contain(marker) for marker in MARKER_BYTES):
        return None
    attributes = create_attributes(item.attributes, version)
    return attributes if is_l4_create(attributes) else None


def _uses_local_key(item: PeekedBatchItem, placeholder_is_local: bool) -> bool:
    operation = item.operation
    if operation not in _USES_UID:
        return False
    uid = item.unique_identifier
    if uid is None:
        return placeholder_is_local
    return is_l4(uid) or (operation in _CRYPTO and is_l3(uid))
