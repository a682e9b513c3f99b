"""Judge a KMIP response against the one a test case expects. Pure: items in, findings out.

The OASIS test cases (KMIP Profiles 1.4 / 2.1, XML encoding of §5.4.1) are transcripts from
one server; another conformant server answers differently where the protocol lets it choose.
KMIP Profiles §4.1 "Permitted Test Case Variations" lists what may differ; "other variations
not explicitly noted ... SHALL be deemed non-conformant". This module permits exactly the
following, and compares everything else item by item, in order, by tag, type and value:

Values the server chooses (§4.1.1 "Variable Items"):

* **Unique identifiers** (Unique Identifier, Private Key / Public Key Unique Identifier, and
  every other ``$NAME`` placeholder of an expected response): the first ``$NAME`` seen in an
  expected response binds to the actual value there (it must have the expected type); every
  later use, in responses and in requests, must equal the bound value. A literal value in an
  expected response is never a placeholder and must match exactly.
* **Time Stamp** (response header) and **Date-Time attributes the server sets** (Initial Date,
  Last Change Date, ...): the files write them as ``$NOW`` / ``$NOW±N``; any Date-Time within
  ``tolerance`` seconds of the case's ``now`` (plus N) is accepted. When the same ``$NOW±N``
  (N ≠ 0) was sent in an earlier request, the server must return exactly what was sent: the
  request fixed it. The header Time Stamp is accepted within the window even if written as a
  literal.
* **Unique Batch Item ID, Asynchronous Correlation Value, Server Correlation Value**: any value
  of the expected type; a Server Correlation Value the file does not show is accepted too.
* **Server-generated key material** (Key Value of keys from Create, Create Key Pair, Derive Key,
  Re-key, Re-key Key Pair): for such an object, every leaf under Key Material may differ
  (same type; a Byte String keeps its length), and so may the Digest Value (same length).
* **Server-generated data**: an Encrypt whose request carried no IV Counter Nonce lets the
  server pick the IV, so IV Counter Nonce, Data and Authenticated Encryption Tag of the
  response may differ (same length); the same holds for the output of Encrypt, MAC and Sign
  (Data, IV Counter Nonce, Authenticated Encryption Tag, MAC Data, Signature Data) under a
  server-generated key. Decrypted data never varies. The Data of an RNG Retrieve is
  random output: it may differ (same length, the request's Data Length).
* **Query**: Vendor Identification and the contents of Server Information may differ, and the
  Operation, Object Type and Extension Information lists may hold more entries than shown
  (a server may support more); every entry the file shows must be present.

Behaviour (§4.1.2 "Variable behavior"):

* **Result Message**: its text is implementation-specific and it may be present or absent.
  Result Status and Result Reason must match exactly.
* **Additional attributes**: a Get Attributes response may return attributes beyond those
  shown, and in any order (1.x ``Attribute`` structures of the payload; the 2.x ``Attributes``
  structure); Get Attribute List may name more attributes, in any order. Every attribute
  shown must be present with a matching value. Nowhere else are extra items accepted.
* **Interop**: the 2.x cases open and close with ``Interop`` requests, whose use the profiles
  make optional; that step is skipped by the runner (:mod:`kcm.conformance.runner`) when the
  server answers Operation Not Supported. The matcher itself judges it like any other.

Findings are one line each, naming the element path in the expected message, such as
``ResponseMessage/BatchItem[0]/ResponsePayload/UniqueIdentifier: expected 'abc', got 'abd'``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kcm.kmip import registry
from kcm.kmip.enums import Operation
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.kmip.xml_encoding import items_from_xml, message_version, value_text
from kcm.ttlv.types import TYPE_NAMES, Item, ItemType, Value

__all__ = [
    "DEFAULT_TOLERANCE", "MatchState", "Placeholder", "PlaceholderMarker", "UnboundPlaceholder",
    "match_response", "parse_case",
]


#: Seconds a server's clock (and a case's run time) may stray from the runner's ``now``.
DEFAULT_TOLERANCE = 600

_S = ItemType.STRUCTURE
_BYTES = ItemType.BYTE_STRING
_DT = ItemType.DATE_TIME
_DTX = ItemType.DATE_TIME_EXTENDED

_NOW = re.compile(r"\$NOW(?P<offset>[+-][0-9]+)?\Z")

# Items whose value the server chooses in every response (§4.1.1).
_ANY_VALUE = frozenset({
    Tag.UNIQUE_BATCH_ITEM_ID, Tag.ASYNCHRONOUS_CORRELATION_VALUE, Tag.SERVER_CORRELATION_VALUE,
    Tag.RESULT_MESSAGE,
})
# Items a server may add where the file shows none.
_OPTIONAL_EXTRA = frozenset({Tag.SERVER_CORRELATION_VALUE, Tag.RESULT_MESSAGE})
# Items a server may leave out where the file shows one.
_OPTIONAL_MISSING = frozenset({Tag.RESULT_MESSAGE})

_GENERATING_OPERATIONS = frozenset({
    Operation.CREATE, Operation.CREATE_KEY_PAIR, Operation.DERIVE_KEY, Operation.RE_KEY,
    Operation.RE_KEY_KEY_PAIR,
})
_GENERATED_UID_TAGS = (
    Tag.UNIQUE_IDENTIFIER, Tag.PRIVATE_KEY_UNIQUE_IDENTIFIER, Tag.PUBLIC_KEY_UNIQUE_IDENTIFIER,
)
_PRODUCING_OPERATIONS = frozenset({Operation.ENCRYPT, Operation.MAC, Operation.SIGN})
_CRYPTO_OUTPUT = frozenset({
    Tag.DATA, Tag.IV_COUNTER_NONCE, Tag.AUTHENTICATED_ENCRYPTION_TAG, Tag.MAC_DATA,
    Tag.SIGNATURE_DATA,
})
_SERVER_IV_OUTPUT = frozenset({Tag.DATA, Tag.IV_COUNTER_NONCE, Tag.AUTHENTICATED_ENCRYPTION_TAG})
# A signature's length may vary (DER-encoded ECDSA); other generated byte strings keep theirs.
_ANY_LENGTH = frozenset({Tag.SIGNATURE_DATA})

_QUERY_LISTS = frozenset({Tag.OPERATION, Tag.OBJECT_TYPE, Tag.EXTENSION_INFORMATION})
_QUERY_ANY = frozenset({Tag.VENDOR_IDENTIFICATION})


# ---------------------------------------------------------------------------
# Placeholders


@dataclass(frozen=True, slots=True)
class Placeholder:
    """A dynamic value of a test case (``$NOW-3600``, ``$UNIQUE_IDENTIFIER_0``), kept unresolved.

    ``name`` is the text without a ``$NOW`` offset; ``offset`` the offset in seconds.
    """

    text: str

    @property
    def is_now(self) -> bool:
        """Whether this is ``$NOW`` or ``$NOW±N``."""
        return _NOW.match(self.text) is not None

    @property
    def offset(self) -> int:
        """N of ``$NOW±N`` (0 for ``$NOW`` and for every other placeholder)."""
        match = _NOW.match(self.text)
        return int(match.group("offset") or 0) if match else 0


class PlaceholderMarker:
    """A placeholder resolver for :func:`items_from_xml` that leaves :class:`Placeholder` values.

    The leaves it produces are not encodable; :meth:`MatchState.substitute` turns a request
    into a concrete one, and :func:`match_response` reads them in expected responses.
    """

    def resolve(self, placeholder: str, item_type: ItemType) -> Value:
        """A :class:`Placeholder` for ``placeholder`` (whatever the item's type)."""
        return Placeholder(placeholder)  # type: ignore[return-value]

    def placeholder_for(self, item_type: ItemType, value: Value) -> str | None:
        """The placeholder text of a :class:`Placeholder` value, else None."""
        return value.text if isinstance(value, Placeholder) else None


def parse_case(text: str) -> list[Item]:
    """The messages of a test-case XML document, placeholders left as :class:`Placeholder`.

    Raises :class:`kcm.kmip.xml_encoding.XmlEncodingError` for a malformed document.
    """
    return items_from_xml(text, placeholders=PlaceholderMarker())


class UnboundPlaceholder(ValueError):
    """A request uses a placeholder that no earlier response has bound."""


# ---------------------------------------------------------------------------
# State of one case


@dataclass
class MatchState:
    """What one test case has learnt so far: bindings, server-generated objects, the clock.

    ``now`` is the case's time (POSIX seconds) that ``$NOW`` means in requests; ``tolerance``
    how far (seconds) a server's time may be from it. ``bindings`` maps placeholder text to
    the value bound from a response; ``sent`` the ``$NOW±N`` values put into requests;
    ``server_generated`` the identifiers of objects the server generated; ``last_values`` the
    latest value of each leaf tag seen in an actual response.
    """

    now: int
    tolerance: int = DEFAULT_TOLERANCE
    bindings: dict[str, Value] = field(default_factory=dict)
    sent: dict[str, Value] = field(default_factory=dict)
    server_generated: set[str] = field(default_factory=set)
    last_values: dict[int, Value] = field(default_factory=dict)

    def substitute(self, request: Item) -> Item:
        """A copy of ``request`` with every placeholder replaced by a concrete value.

        ``$NOW±N`` becomes ``now`` ± N; another placeholder its bound value. A placeholder
        no response has bound takes the latest value of the same tag in an actual response:
        some upstream files (CS-BC-M-13-14) write a literal where they later refer to a
        placeholder. Raises :class:`UnboundPlaceholder` when there is no such value.
        """
        return self._substitute(request)

    def _substitute(self, item: Item) -> Item:
        if item.type is _S:
            return Item(item.tag, _S, [self._substitute(c) for c in item.value])  # type: ignore[union-attr]
        value = item.value
        if not isinstance(value, Placeholder):
            return Item(item.tag, item.type, value, item.width)
        if value.is_now:
            if item.type not in (_DT, _DTX):
                raise UnboundPlaceholder(f"{value.text} in a {TYPE_NAMES[item.type]} item")
            seconds = self.now + value.offset
            concrete: Value = seconds if item.type is _DT else seconds * 1_000_000
            self.sent[value.text] = concrete
            return Item(item.tag, item.type, concrete)
        if value.text in self.bindings:
            return Item(item.tag, item.type, self.bindings[value.text])
        if item.tag in self.last_values:
            return Item(item.tag, item.type, self.last_values[item.tag])
        raise UnboundPlaceholder(f"{value.text} is not bound by any earlier response")

    def remember(self, actual: Item) -> None:
        """Record the leaf values of an actual response for :meth:`substitute`'s fallback."""
        if actual.type is _S:
            for child in actual.value:  # type: ignore[union-attr]
                self.remember(child)
        else:
            self.last_values[actual.tag] = actual.value

    def _snapshot(self) -> tuple[dict[str, Value], set[str]]:
        return dict(self.bindings), set(self.server_generated)

    def _restore(self, snapshot: tuple[dict[str, Value], set[str]]) -> None:
        self.bindings, self.server_generated = dict(snapshot[0]), set(snapshot[1])


# ---------------------------------------------------------------------------
# Matching


@dataclass(frozen=True)
class _Context:
    """What applies under one point of the expected tree."""

    version: Version
    operation: int | None = None
    variable: frozenset[int] = frozenset()  # tags whose values the server chose here
    free: bool = False  # inside server-generated Key Material: every leaf may differ


def match_response(expected: Item, actual: Item, state: MatchState, *,
                   request: Item | None = None) -> list[str]:
    """The differences between ``actual`` and ``expected`` that §4.1 does not permit.

    ``expected`` is a response message from :func:`parse_case`; ``actual`` the decoded
    response; ``request`` the concrete request that was sent (it tells whether the server
    chose an IV). An empty list means the response conforms. Matching binds placeholders
    and records server-generated objects in ``state``, also when it finds differences.
    """
    version = message_version(expected)
    matcher = _Matcher(state, request)
    name = _name(expected.tag, version)
    findings = matcher.match(expected, actual, name, _Context(version))
    state.remember(actual)
    return findings


def _name(tag: int, version: Version) -> str:
    try:
        return registry.xml_name(tag, version)
    except (KeyError, ValueError):
        return f"0x{tag:06X}"


class _Matcher:
    def __init__(self, state: MatchState, request: Item | None) -> None:
        self.state = state
        self.request_items = _request_batch_items(request)

    # -- dispatch ---------------------------------------------------------
    def match(self, exp: Item, act: Item, path: str, ctx: _Context) -> list[str]:
        if exp.tag != act.tag:
            return [f"{path}: expected {_name(exp.tag, ctx.version)}, "
                    f"got {_name(act.tag, ctx.version)}"]
        if exp.type != act.type:
            return [f"{path}: expected a {TYPE_NAMES[exp.type]}, got a {TYPE_NAMES[act.type]}"]
        if exp.type is _S:
            return self._structure(exp, act, path, ctx)
        return self._leaf(exp, act, path, ctx)

    # -- leaves -----------------------------------------------------------
    def _leaf(self, exp: Item, act: Item, path: str, ctx: _Context) -> list[str]:
        expected, actual = exp.value, act.value
        state = self.state
        if isinstance(expected, Placeholder):
            if expected.is_now:
                return self._time(exp, act, path, expected)
            bound = state.bindings.get(expected.text)
            if bound is None:
                state.bindings[expected.text] = actual
                return []
            if not _equal(bound, actual):
                return [f"{path}: expected {expected.text} = {_show(exp, bound, ctx)}, "
                        f"got {_show(act, actual, ctx)}"]
            return []
        if exp.tag == Tag.TIME_STAMP:
            return self._time(exp, act, path, Placeholder("$NOW"))
        if ctx.free or exp.tag in _ANY_VALUE or exp.tag in ctx.variable:
            if (exp.type is _BYTES and exp.tag not in _ANY_LENGTH and exp.tag not in _ANY_VALUE
                    and len(actual) != len(expected)):  # type: ignore[arg-type]
                return [f"{path}: expected {len(expected)} bytes "  # type: ignore[arg-type]
                        f"(value may vary), got {len(actual)}"]  # type: ignore[arg-type]
            return []
        if not _equal(expected, actual):
            return [f"{path}: expected {_show(exp, expected, ctx)}, got {_show(act, actual, ctx)}"]
        return []

    def _time(self, exp: Item, act: Item, path: str, placeholder: Placeholder) -> list[str]:
        state = self.state
        actual = act.value
        if exp.type not in (_DT, _DTX) or not isinstance(actual, int):
            return [f"{path}: {placeholder.text} needs a Date-Time, got {TYPE_NAMES[act.type]}"]
        if placeholder.offset and placeholder.text in state.sent:
            sent = state.sent[placeholder.text]
            if actual != sent:
                return [f"{path}: expected {placeholder.text} as sent "
                        f"({_show(exp, sent, None)}), got {_show(act, actual, None)}"]
            return []
        seconds = actual if exp.type is _DT else actual // 1_000_000
        want = state.now + placeholder.offset
        if abs(seconds - want) > state.tolerance:
            return [f"{path}: expected {placeholder.text} (within {state.tolerance} s of "
                    f"{_show(Item(exp.tag, _DT, want), want, None)}), "
                    f"got {_show(act, actual, None)}"]
        return []

    # -- structures -------------------------------------------------------
    def _structure(self, exp: Item, act: Item, path: str, ctx: _Context) -> list[str]:
        tag = exp.tag
        if tag == Tag.SERVER_INFORMATION:
            return []
        if tag == Tag.BATCH_ITEM:
            return self._batch_item(exp, act, path, ctx)
        if tag == Tag.KEY_MATERIAL and Tag.KEY_MATERIAL in ctx.variable:
            ctx = _Context(ctx.version, ctx.operation, ctx.variable, free=True)
        exp_children: list[Item] = exp.value  # type: ignore[assignment]
        act_children: list[Item] = act.value  # type: ignore[assignment]
        op = ctx.operation
        if tag == Tag.RESPONSE_PAYLOAD and op == Operation.GET_ATTRIBUTES:
            return self._bag(exp_children, act_children, path, ctx, {Tag.ATTRIBUTE}, extra=True)
        if tag == Tag.ATTRIBUTES and op == Operation.GET_ATTRIBUTES:
            bag = {c.tag for c in exp_children} | {c.tag for c in act_children}
            return self._bag(exp_children, act_children, path, ctx, bag, extra=True)
        if tag == Tag.RESPONSE_PAYLOAD and op == Operation.GET_ATTRIBUTE_LIST:
            bag = {Tag.ATTRIBUTE_NAME, Tag.ATTRIBUTE_REFERENCE}
            return self._bag(exp_children, act_children, path, ctx, bag, extra=True)
        if tag == Tag.RESPONSE_PAYLOAD and op == Operation.QUERY:
            query_ctx = _Context(ctx.version, op, ctx.variable | _QUERY_ANY, ctx.free)
            return self._bag(exp_children, act_children, path, query_ctx, _QUERY_LISTS,
                             extra=True)
        return self._ordered(exp_children, act_children, path, ctx)

    def _batch_item(self, exp: Item, act: Item, path: str, ctx: _Context) -> list[str]:
        operation = exp.find(Tag.OPERATION)
        op = operation.value if operation is not None else None
        index = int(path.rsplit("[", 1)[1].rstrip("]")) if path.endswith("]") else 0
        variable: set[int] = set()
        payload = act.find(Tag.RESPONSE_PAYLOAD)
        uid = payload.find(Tag.UNIQUE_IDENTIFIER) if payload is not None and \
            payload.type is _S else None
        if uid is not None and uid.value in self.state.server_generated:
            variable |= {Tag.KEY_MATERIAL, Tag.DIGEST_VALUE}
            if op in _PRODUCING_OPERATIONS:
                variable |= _CRYPTO_OUTPUT
        if op == Operation.ENCRYPT and not self._request_has(index, Tag.IV_COUNTER_NONCE):
            variable |= _SERVER_IV_OUTPUT
        if op == Operation.RNG_RETRIEVE:
            # Random output: only its length is the request's (Data Length).
            variable |= {Tag.DATA}
        if (op == Operation.DECRYPT and uid is not None
                and uid.value in self.state.server_generated
                and not self._request_data_from_server(index)):
            # A ciphertext written into the file was made under the file author's key, not
            # under the key this server generated: what it decrypts to is generated output
            # (§4.1.1, server-generated key material), like an Encrypt's under that key.
            variable |= {Tag.DATA}
        item_ctx = _Context(ctx.version, op if isinstance(op, int) else None, frozenset(variable))
        findings = self._ordered(exp.value, act.value, path, item_ctx)  # type: ignore[arg-type]
        if op in _GENERATING_OPERATIONS and payload is not None and payload.type is _S:
            for uid_tag in _GENERATED_UID_TAGS:
                for generated in payload.find_all(uid_tag):
                    if isinstance(generated.value, str):
                        self.state.server_generated.add(generated.value)
        return findings

    def _request_data_from_server(self, index: int) -> bool:
        """Is the request's Data a value this server returned earlier in the case?"""
        if index >= len(self.request_items):
            return False
        payload = self.request_items[index].find(Tag.REQUEST_PAYLOAD)
        data = payload.find(Tag.DATA) if payload is not None and payload.type is _S else None
        if data is None:
            return False
        produced = [v for v in self.state.bindings.values() if isinstance(v, bytes)]
        return data.value in produced or data.value == self.state.last_values.get(Tag.DATA)

    def _request_has(self, index: int, tag: int) -> bool:
        if index >= len(self.request_items):
            return False
        payload = self.request_items[index].find(Tag.REQUEST_PAYLOAD)
        return payload is not None and payload.type is _S and payload.find(tag) is not None

    def _ordered(self, exp_children: list[Item], act_children: list[Item], path: str,
                 ctx: _Context) -> list[str]:
        """Children in order; a missing optional item or an allowed extra one is skipped."""
        exp_children = _without_default_index(exp_children)
        act_children = _without_default_index(act_children)
        findings: list[str] = []
        names = _child_paths(exp_children, path, ctx.version)
        j = 0
        for exp_child, child_path in zip(exp_children, names, strict=True):
            while j < len(act_children) and act_children[j].tag != exp_child.tag and (
                act_children[j].tag in _OPTIONAL_EXTRA
                or any(c.tag == exp_child.tag for c in act_children[j + 1:])
            ):
                if act_children[j].tag not in _OPTIONAL_EXTRA:
                    findings.append(self._unexpected(act_children[j], path, ctx))
                j += 1
            if j < len(act_children) and act_children[j].tag == exp_child.tag:
                findings += self.match(exp_child, act_children[j], child_path, ctx)
                j += 1
            elif exp_child.tag not in _OPTIONAL_MISSING:
                findings.append(f"{child_path}: missing")
        for extra in act_children[j:]:
            if extra.tag not in _OPTIONAL_EXTRA:
                findings.append(self._unexpected(extra, path, ctx))
        return findings

    def _bag(self, exp_children: list[Item], act_children: list[Item], path: str,
             ctx: _Context, bag: set[int] | frozenset[int], *, extra: bool) -> list[str]:
        """Children of ``bag`` tags in any order (more allowed if ``extra``); others in order."""
        findings = self._ordered([c for c in exp_children if c.tag not in bag],
                                 [c for c in act_children if c.tag not in bag], path, ctx)
        unused = [c for c in act_children if c.tag in bag]
        names = _child_paths(exp_children, path, ctx.version)
        for exp_child, child_path in zip(exp_children, names, strict=True):
            if exp_child.tag not in bag:
                continue
            candidates = [c for c in unused if _same_entry(exp_child, c)]
            chosen = None
            first_findings: list[str] | None = None
            for candidate in candidates:
                snapshot = self.state._snapshot()
                trial = self.match(exp_child, candidate, child_path, ctx)
                if not trial:
                    chosen = candidate
                    break
                self.state._restore(snapshot)
                if first_findings is None:
                    first_findings = trial
            if chosen is not None:
                unused.remove(chosen)
            elif first_findings is not None and exp_child.type is _S:
                findings += first_findings
            else:
                findings.append(f"{child_path}: missing ({_describe(exp_child, ctx)})")
        if not extra:
            findings += [self._unexpected(c, path, ctx) for c in unused]
        return findings

    def _unexpected(self, item: Item, path: str, ctx: _Context) -> str:
        return f"{path}: unexpected {_describe(item, ctx)}"


def _without_default_index(children: list[Item]) -> list[Item]:
    """Drop an Attribute Index of 0: KMIP 1.x defines an absent index as 0 (KMIP 1.4
    §2.1.1), so the two forms say the same and neither is a difference."""
    if not any(c.tag == Tag.ATTRIBUTE_INDEX for c in children):
        return children
    return [c for c in children if not (c.tag == Tag.ATTRIBUTE_INDEX and c.value == 0)]


def _equal(expected: Value, actual: Value) -> bool:
    """Equal values of one TTLV type (True is not 1, and b"1" is not "1")."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, int) and isinstance(actual, int):
        return int(expected) == int(actual)
    return type(expected) is type(actual) and expected == actual


def _same_entry(expected: Item, actual: Item) -> bool:
    """Whether ``actual`` is a candidate for ``expected`` in a bag: same tag, and for a 1.x
    ``Attribute`` the same Attribute Name."""
    if expected.tag != actual.tag:
        return False
    if expected.tag == Tag.ATTRIBUTE and expected.type is _S and actual.type is _S:
        exp_name = expected.find(Tag.ATTRIBUTE_NAME)
        act_name = actual.find(Tag.ATTRIBUTE_NAME)
        return exp_name is None or act_name is None or exp_name.value == act_name.value
    return True


def _child_paths(children: list[Item], path: str, version: Version) -> list[str]:
    counts: dict[int, int] = {}
    for child in children:
        counts[child.tag] = counts.get(child.tag, 0) + 1
    seen: dict[int, int] = {}
    paths = []
    for child in children:
        name = f"{path}/{_name(child.tag, version)}"
        if child.tag == Tag.BATCH_ITEM or counts[child.tag] > 1:
            name += f"[{seen.get(child.tag, 0)}]"
            seen[child.tag] = seen.get(child.tag, 0) + 1
        paths.append(name)
    return paths


def _describe(item: Item, ctx: _Context) -> str:
    name = _name(item.tag, ctx.version)
    if item.type is _S:
        attribute_name = item.find(Tag.ATTRIBUTE_NAME) if item.tag == Tag.ATTRIBUTE else None
        if attribute_name is not None:
            return f"{name} {attribute_name.value!r}"
        return name
    return f"{name} {_show(item, item.value, ctx)}"


def _show(item: Item, value: Value, ctx: _Context | None) -> str:
    """A value as the XML files write it, quoted; placeholders by name."""
    if isinstance(value, Placeholder):
        return value.text
    version = ctx.version if ctx is not None else (2, 1)
    if isinstance(value, int) and not isinstance(value, bool):
        value = int(value)  # an IntEnum member reads as its number
    try:
        text = value_text(Item(item.tag, item.type, value, item.width), version)
    except (TypeError, ValueError, OverflowError):
        return repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return repr(text)


def _request_batch_items(request: Item | None) -> list[Item]:
    if request is None or request.type is not _S:
        return []
    return [c for c in request.value if c.tag == Tag.BATCH_ITEM and c.type is _S]  # type: ignore[union-attr]

