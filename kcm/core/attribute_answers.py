"""Get Attributes answers kept with the object they describe.

Most Get Attributes a server answers ask the same few things of the same objects, over and
over (a storage array polling its key's State). Executing one in a lean group costs the
writer thread a session, the batch machinery and the encoding of the answer: about 150 µs
of CPU, where its audit record and commit cost about as much again.

When the general path has answered a plain Get Attributes request
(:func:`kcm.kernel.plain_messages.read_get_attributes`) with every item successful,
:func:`remember` keeps each item's answer payload (its bytes, as
:func:`kcm.kernel.plain_messages.attributes_payload` writes them) in the object's cache
entry (:mod:`kcm.core.store.object_cache`). The entry names one content of the object's
row; the payload is kept under what else it depends on: the protocol version, the
attributes asked for (in order) and the state the object is in at the time (an Activation
or Deactivation Date that passes moves it).

:func:`recall` answers such a request again, in a lean group's transaction, when every
item has a kept payload: for each object it reads the row's stamp (as loading the object
does), takes the entry only if it is current, and asks the questions loading asks of the
caller (its tenant, its service provisioned as the store remembers it, the object's service
allowed to it by the access policy). Anything else (an object not cached, another tenant's,
a refusal, a state that moved, a question never answered) is None, and the request is
executed as always, which keeps its answer for the next time. Nothing is served on trust:
a change of the object, by this core or another, changes the stamp.

Bounded: at most :data:`ANSWERS_KEPT` answers per object, each of at most
:data:`ANSWER_MAX_BYTES`, kept only for a request naming at most :data:`REFERENCES_KEPT`
attributes (the references are part of the key: a request of thousands, answered small
because the object has few of them, would otherwise hold megabytes the cache does not
count); they go with the entry (the cache's size and age bounds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kcm.core import managed, policy
from kcm.core.policy import AccessPolicy
from kcm.core.store import repository
from kcm.core.store.known import KnownFacts
from kcm.core.store.object_cache import CachedObject, ObjectCache
from kcm.identity import Principal
from kcm.kernel.plain_messages import NOT_PLAIN, attributes_payload
from kcm.kmip.enums import Operation, ResultStatus
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import RequestMessage, ResponseBatchItem

__all__ = ["ANSWERS_KEPT", "ANSWER_MAX_BYTES", "REFERENCES_KEPT", "recall", "remember"]

#: The most answers kept per object (the newest replace them all once there are more).
ANSWERS_KEPT = 4
#: The longest answer payload kept.
ANSWER_MAX_BYTES = 2048
#: The most attribute references a request whose answer is kept may name (a poll names a
#: few; every attribute of KMIP 2.1 is under 100).
REFERENCES_KEPT = 32

_GET_ATTRIBUTES = Operation.GET_ATTRIBUTES
_ANSWERS = "get attributes answers"


def recall(connection: Any, objects: ObjectCache, known: KnownFacts, principal: Principal,
           access: AccessPolicy, request: RequestMessage, now: int) -> list[bytes] | None:
    """The kept answer payload of each item of ``request`` (a plain request of Get
    Attributes only) for ``principal`` at ``now``, reading the objects' stamps on
    ``connection`` (in the lean group's transaction); None unless every item has one."""
    try:
        tenant = policy.tenant_of(principal)
    except KmipError:
        return None
    if not policy.known_provisioned(known, principal):
        return None
    version = request.header.version
    payloads = []
    for item in request.batch_items:
        payload = item.request_payload
        uid = payload.unique_identifier
        if item.operation != _GET_ATTRIBUTES or type(uid) is not str:
            return None
        obj = _current(connection, objects, tenant, uid)
        answers = None if obj is None or obj.cached is None else obj.cached.views.get(_ANSWERS)
        if answers is None:
            return None
        try:
            policy.check_object_use(principal, access, obj.row.service)
        except KmipError:
            return None
        kept = answers.get(_key(version, payload.attribute_references, obj, now))
        if kept is None:
            return None
        payloads.append(kept)
    return payloads


def remember(connection: Any, objects: ObjectCache, principal: Principal,
             request: RequestMessage, items: Sequence[ResponseBatchItem], now: int) -> None:
    """Keep the answers the general path gave ``request`` (a plain request of Get
    Attributes only, executed in the lean group's transaction on ``connection``), if every
    item succeeded: each with its object's cache entry, if that is current."""
    if len(items) != len(request.batch_items) or any(
            item.result_status != ResultStatus.SUCCESS for item in items):
        return
    tenant = policy.tenant_of(principal)  # (it was the items' tenant: they succeeded)
    version = request.header.version
    for asked, answered in zip(request.batch_items, items, strict=True):
        uid = asked.request_payload.unique_identifier
        if asked.operation != _GET_ATTRIBUTES or type(uid) is not str:
            return
        obj = _current(connection, objects, tenant, uid)
        if obj is None or obj.cached is None:
            continue
        try:
            payload = attributes_payload(answered.response_payload, version)
        except Exception:
            NOT_PLAIN.__traceback__ = None  # (see kcm.kernel.plain_messages)
            continue
        references = asked.request_payload.attribute_references
        if len(payload) <= ANSWER_MAX_BYTES and len(references or ()) <= REFERENCES_KEPT:
            _keep(obj.cached, _key(version, references, obj, now), payload)


def _current(connection: Any, objects: ObjectCache, tenant: str, uid: str
             ) -> managed.StoredObject | None:
    """``tenant``'s object ``uid`` from its cache entry, if the entry names the row as it
    is in this transaction (its stamp read on ``connection``, as loading reads it)."""
    stamp = repository.stamp_on(connection, tenant, uid)
    cached = None if stamp is None else objects.get(tenant, uid, stamp)
    return None if cached is None else managed.from_cache(cached)


def _key(version: tuple[int, int], references: Sequence[Any], obj: managed.StoredObject,
         now: int) -> tuple[Any, ...]:
    return (version, tuple(references), int(managed.state_now(obj, now)))


def _keep(cached: CachedObject, key: tuple[Any, ...], payload: bytes) -> None:
    answers = cached.views.get(_ANSWERS)
    if answers is None or len(answers) >= ANSWERS_KEPT:
        # (a fresh dict replaces the full one: a reader on another thread keeps its own)
        answers = cached.views[_ANSWERS] = {}
    answers[key] = payload
