"""What an operation handler is given: the transaction, the caller, the time, the keys."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from sqlalchemy.orm import Session

from kcm.core.store.known import LEAN_READ_INFO
from kcm.crypto.derivation import MAX_PBKDF2_ITERATIONS, pbkdf2
from kcm.identity import Principal
from kcm.kernel.batch import BatchStopped, RunElsewhere
from kcm.kernel.missing import identifier_label
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import IdPlaceholder
from kcm.kmip.versions import Version
from kcm.l4.identifiers import is_l4

if TYPE_CHECKING:
    from kcm.core.keyring import Keyring
    from kcm.core.server_info import ServerInfo
    from kcm.crypto.rsa_keys import RsaKeyPair


class Pbkdf2Results:
    """PBKDF2 derivations computed for one request before its group commit, on its tenant's
    worker, by everything they were computed from: the writer takes a result made from the
    same inputs (the base key's material as it reads it) instead of computing it, and
    computes any other itself. Dropped with the request."""

    __slots__ = ("_results",)

    def __init__(self) -> None:
        self._results: dict[tuple[str, int, bytes, int, bytes], bytes] = {}

    def compute(self, algorithm: hashes.HashAlgorithm, length: int, salt: bytes, count: int,
                key: bytes) -> bytes:
        """:func:`~kcm.crypto.derivation.pbkdf2`, kept (the worker's)."""
        derived = pbkdf2(algorithm, length, salt, count, key)
        self._results[_pbkdf2_inputs(algorithm, length, salt, count, key)] = derived
        return derived

    def take(self, algorithm: hashes.HashAlgorithm, length: int, salt: bytes, count: int,
             key: bytes) -> bytes:
        """The result kept for these inputs, once; else computed here (the writer's)."""
        derived = self._results.pop(_pbkdf2_inputs(algorithm, length, salt, count, key), None)
        return pbkdf2(algorithm, length, salt, count, key) if derived is None else derived

    def __len__(self) -> int:
        return len(self._results)

    def clear(self) -> None:
        self._results.clear()


def _pbkdf2_inputs(algorithm: hashes.HashAlgorithm, length: int, salt: bytes, count: int,
                   key: bytes) -> tuple[str, int, bytes, int, bytes]:
    return algorithm.name, length, salt, count, hashlib.sha256(key).digest()


#: The most RSA private-key operations (Sign, Decrypt, Register's key check) the writer
#: computes itself for one request: those its tenant's worker could not compute beforehand
#: (their key made by an earlier item of the same batch, named by the ID Placeholder). Each
#: costs the writer, which runs every tenant's writes, up to tens of milliseconds (an
#: RSA-4096 signature of Digested Data named by no hash, 56 ms); more are refused (Server
#: Limit Exceeded).
MAX_WRITER_PRIVATE_KEY_OPERATIONS = 4


class PrivateKeyResults:
    """The RSA private-key operations of one request (signatures, decryptions), computed
    before its group commit on its tenant's worker, by everything they were computed from
    (:func:`private_key_inputs`): the writer, after every check the operation makes, takes
    the result made from the same inputs instead of computing it. Dropped with the request.

    ``first_pass``: the request reached the writer without having been prepared; the first
    such operation it meets makes it run again after preparation
    (:class:`~kcm.kernel.batch.RunElsewhere`), with nothing of it kept."""

    __slots__ = ("_results", "computed_here", "first_pass")

    def __init__(self, *, first_pass: bool = False) -> None:
        #: Results, or refusals (Result Reason, Result Message, 1.x Result Reason).
        self._results: dict[tuple[object, ...], bytes | tuple[int, str, int | None]] = {}
        self.first_pass = first_pass
        #: How many the writer computed itself (at most
        #: :data:`MAX_WRITER_PRIVATE_KEY_OPERATIONS`).
        self.computed_here = 0

    def compute(self, inputs: tuple[object, ...], operation: Callable[[], bytes]) -> None:
        """``operation()``, kept by its ``inputs`` (the worker's): once for items that ask
        the same (a signature, a decryption of the same input is as good twice). What it
        refuses (a ciphertext that does not decrypt) is kept too, to be refused alike."""
        if inputs not in self._results:
            try:
                self._results[inputs] = operation()
            except KmipError as e:
                self._results[inputs] = (e.reason, e.message, e.v1_reason)

    def take(self, inputs: tuple[object, ...], operation: Callable[[], bytes]) -> bytes:
        """The result kept for ``inputs`` (or its refusal, raised anew); else (the
        writer's) :class:`RunElsewhere` on a first pass, or ``operation()`` computed here
        within the request's bound."""
        result = self._results.get(inputs)
        if isinstance(result, tuple):
            reason, message, v1_reason = result
            raise KmipError(reason, message, v1_reason=v1_reason)
        if result is not None:
            return result
        if self.first_pass:
            raise RunElsewhere("an RSA private-key operation is computed beforehand")
        if self.computed_here >= MAX_WRITER_PRIVATE_KEY_OPERATIONS:
            raise KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                            f"at most {MAX_WRITER_PRIVATE_KEY_OPERATIONS} RSA private-key "
                            "operations in one request that cannot be computed beforehand "
                            "(with a key it makes itself); send the rest in a request of "
                            "their own")
        self.computed_here += 1
        return operation()

    def clear(self) -> None:
        self._results.clear()


def private_key_inputs(kind: str, uid: str, spec: object, *parts: bytes | str) -> tuple:
    """What identifies one private-key operation's result: its kind, the key (an object's
    material never changes under its identifier), its scheme (a frozen dataclass) and its
    input (as a digest: the result is kept, the data need not be)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return kind, uid, spec, digest.digest()


class KeyPairs:
    """What was made for one request before its group commit, on its tenant's worker
    (:meth:`kcm.core.request_handler.CoreRequestHandler._prepare`): key pairs, by modulus
    length, and PBKDF2 derivations (:attr:`pbkdf2`): the writer thread that runs every
    tenant's writes only stores them. Each pair is handed out once, to one batch item of
    that request, and the rest are dropped with it."""

    __slots__ = ("_by_length", "failure", "pbkdf2", "private", "stopped")

    def __init__(self, *, first_pass: bool = False) -> None:
        self._by_length: dict[int, list[RsaKeyPair]] = {}
        #: The request's PBKDF2 derivations computed beforehand.
        self.pbkdf2 = Pbkdf2Results()
        #: Its RSA private-key operations computed beforehand (``first_pass``: none were:
        #: :class:`PrivateKeyResults`).
        self.private = PrivateKeyResults(first_pass=first_pass)
        #: Why the making stopped early (the request's deadline, its client gone), if it did.
        self.stopped: str | None = None
        #: What the making raised, if it did.
        self.failure: Exception | None = None

    def add(self, length: int, pair: RsaKeyPair) -> None:
        self._by_length.setdefault(length, []).append(pair)

    def take(self, length: int) -> RsaKeyPair:
        """A pair of ``length`` bits, never handed out before. None made (the making
        stopped or failed first): the item fails as the request would have at its next
        batch-item boundary (:class:`~kcm.kernel.batch.BatchStopped`), or with what the
        making raised; it is never made here, on the writer."""
        pairs = self._by_length.get(length)
        if pairs:
            return pairs.pop()
        if self.private.first_pass:
            raise RunElsewhere("a key pair is made beforehand")
        if self.stopped is not None:
            raise BatchStopped(self.stopped)
        if self.failure is not None:
            raise self.failure
        raise RuntimeError(f"no {length}-bit key pair was made for this request")

    def clear(self) -> None:
        """Drop every pair not taken, and the derivations: none outlives its request."""
        self._by_length.clear()
        self.pbkdf2.clear()
        self.private.clear()


#: What one read or write of an object's attributes may cost a request's bound for free, in
#: attributes plus KiB stored: an object of this size is never counted.
FREE_ATTRIBUTE_UNITS = 128
#: What one request's reads and writes of larger objects' attributes may cost in all: an
#: object at the bounds (1,088 attributes, 1 MiB: about 2,000 units) read and written once,
#: an object of 16 attributes of 64 KiB (900 units) about twice. Reading and writing one
#: at the bounds costs the writer about 0.1 s: one request holds it about that long.
MAX_REQUEST_ATTRIBUTE_UNITS = 4_500


class RequestWork:
    """What the items of one request have spent of the work the server allows a request in
    all (:func:`kcm.core.batch.execute` makes one per request): PBKDF2 iterations, at most
    :data:`~kcm.crypto.derivation.MAX_PBKDF2_ITERATIONS` for all its Derive Keys together,
    as for one. The writer thread runs every tenant's writes: a batch of derivations each
    within the bound must not hold it for a batch's worth of them."""

    __slots__ = ("_units_before_item", "attribute_units", "pbkdf2_iterations")

    def __init__(self) -> None:
        self.pbkdf2_iterations = 0
        self.attribute_units = 0
        self._units_before_item = 0

    def next_item(self) -> None:
        """A batch item begins (:func:`kcm.core.batch.execute`)."""
        self._units_before_item = self.attribute_units

    def charge_attributes(self, count: int, size: int) -> None:
        """Count one read or write of an object's ``count`` attributes (``size`` bytes
        stored) beyond :data:`FREE_ATTRIBUTE_UNITS`; refuse (Server Limit Exceeded) if the
        request's would then exceed :data:`MAX_REQUEST_ATTRIBUTE_UNITS`. Reading and
        rewriting an object's attributes costs the writer about 25 us per attribute and
        per KiB: a batch of 64 changes of an object at the bounds held every tenant's
        writes for 3.5 s."""
        units = count + size // 1024 - FREE_ATTRIBUTE_UNITS
        if units <= 0:
            return
        total = self.attribute_units + units
        # The first item that counts any always runs whole, however large its object: a
        # request of one Revoke, Destroy or Delete Attribute of any object passes (one
        # stored over the bounds by an earlier release included).
        if total > MAX_REQUEST_ATTRIBUTE_UNITS and self._units_before_item:
            raise KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                            "the request reads and writes more attributes of large objects "
                            "than one request may; send its items in several requests")
        self.attribute_units = total

    def charge_pbkdf2(self, iterations: int) -> None:
        """Count ``iterations`` about to be computed; refuse (Server Limit Exceeded) if the
        request's would then exceed the bound."""
        total = self.pbkdf2_iterations + iterations
        if total > MAX_PBKDF2_ITERATIONS:
            raise KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                            f"the request's PBKDF2 derivations exceed the server's limit of "
                            f"{MAX_PBKDF2_ITERATIONS} iterations in all")
        self.pbkdf2_iterations = total


#: The most characters of a client's identifier an audit record repeats (a UUID, with a
#: prefix such as ``l3-``, fits).
REQUESTED_LENGTH = 64


def requested_label(uid: str) -> str:
    """``uid``, which a refused item asked for, as its audit record names it: the first
    :data:`REQUESTED_LENGTH` characters (anything but printable ASCII as ``?``), and ``...``
    when it is longer. An L4 token is named by the short label its answer gives (the token
    carries its sealed key, which the audit log never holds)."""
    if is_l4(uid):
        return identifier_label(uid)
    head = "".join(c if " " <= c <= "~" else "?" for c in uid[:REQUESTED_LENGTH])
    return head + ("..." if len(uid) > REQUESTED_LENGTH else "")


#: The :class:`KeyPairs` of the request the writer thread is executing, set by
#: :class:`kcm.core.request_handler.CoreRequestHandler` around it (None: made inline).
prepared_key_pairs: ContextVar[KeyPairs | None] = ContextVar("prepared_key_pairs",
                                                             default=None)


@dataclass(slots=True)
class Caller:
    """The principal a request acts as, and how it reached the core.

    ``gateway`` is the gateway principal that relayed the request over the link (the
    core then trusts the asserted ``principal``); None for a direct connection.
    """

    principal: Principal
    source: str
    gateway: Principal | None = None


class WritesHere(RunElsewhere):  # noqa: N818 - a request for the caller, not a failure
    """An item run in a lean group's read (:func:`about_to_write`) would write:
    the request is answered by a session group instead, with nothing of this run kept.
    :attr:`counting`: the key whose use it would count against its Usage Limits (each use
    of that key writes), or None."""

    def __init__(self, message: str, counting: str | None = None) -> None:
        super().__init__(message)
        self.counting = counting


def about_to_write(session: Session, counting: str | None = None) -> None:
    """Called before an operation writes anything in ``session``: raises
    :class:`WritesHere` in a lean group's read (:meth:`kcm.core.store.engine.Store.read_in`),
    where it must not write. ``counting``: the key it counts a use of (Usage Limits)."""
    if session.info.get(LEAN_READ_INFO):
        raise WritesHere("this item writes: it runs in a session group", counting)


@dataclass(slots=True)
class OperationContext:
    """One batch item's view of the world. Handlers read it and never keep it."""

    session: Session
    caller: Caller
    version: Version
    now: int  # epoch seconds, fixed for the whole request
    keyring: Keyring
    server_info: ServerInfo
    id_placeholder: IdPlaceholder
    random_bytes: object  # Callable[[int], bytes]
    #: The most Unique Identifiers one Locate returns (``[core.limits]``); None: no cap.
    max_locate_results: int | None = None
    #: The request's stop hook (its deadline, its client gone), for a long search to ask.
    should_stop: Callable[[], str | None] | None = None
    #: Identifiers the item touched, for its audit record.
    object_ids: list[str] = field(default_factory=list)
    #: Extra facts for the audit record (text and numbers only, never key material).
    audit_detail: dict[str, object] = field(default_factory=dict)
    #: The key pairs made for the request before it reached the writer (None: none were;
    #: :meth:`new_key_pair` makes them inline).
    key_pairs: KeyPairs | None = field(default_factory=prepared_key_pairs.get)
    #: What the request's items have spent of what a request may (shared by its items).
    work: RequestWork = field(default_factory=RequestWork)

    @property
    def principal(self) -> Principal:
        return self.caller.principal

    @property
    def tenant(self) -> str | None:
        return self.caller.principal.tenant

    def check_stop(self) -> None:
        """Raise :class:`~kcm.kernel.batch.BatchStopped` if the request must stop now (its
        deadline passed, its client gone): for an item that may run long, between steps."""
        if self.should_stop is not None:
            reason = self.should_stop()
            if reason is not None:
                raise BatchStopped(reason)

    def new_key_pair(self, length: int, make: Callable[[int], RsaKeyPair]) -> RsaKeyPair:
        """A fresh key pair of ``length`` bits: one made for this request before its group
        commit (:attr:`key_pairs`; :meth:`KeyPairs.take`), or, for a request that had none
        made (answered in process), ``make(length)``."""
        if self.key_pairs is None:
            return make(length)
        return self.key_pairs.take(length)

    def private_key_operation(self, inputs: tuple[object, ...],
                              operation: Callable[[], bytes]) -> bytes:
        """The result of the RSA private-key operation ``operation`` identified by
        ``inputs`` (:func:`private_key_inputs`): the one computed for this request before
        its group commit (:class:`PrivateKeyResults`), or, for a request answered in
        process, ``operation()``."""
        if self.key_pairs is None:
            return operation()
        return self.key_pairs.private.take(inputs, operation)

    def touched(self, uid: str) -> None:
        """Record that this item acted on ``uid`` (audit)."""
        if uid not in self.object_ids:
            self.object_ids.append(uid)

    def refused(self, uid: str, why: str | None = None) -> None:
        """Record, for the item's audit record only, that it was refused the object ``uid``
        it asked for (``requested``: an operator reads which object a refused attempt
        targeted) and, for a refusal because of who asks, why (``denied``). The client's
        answer does not change: another tenant's object still answers as a missing one."""
        self.audit_detail["requested"] = requested_label(uid)
        if why is not None:
            self.audit_detail["denied"] = why
