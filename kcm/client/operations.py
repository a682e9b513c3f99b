"""Every operation the KCM servers offer, as one method each, for both the blocking and the
Twisted client.

:class:`Operations` is a mixin: a subclass supplies ``_run(operation, payload, shape)``,
which sends one request of one batch item and hands the successful response payload to
``shape`` — the blocking :class:`~kcm.client.session.Session` returns ``shape(payload)``, the
Twisted :class:`~kcm.client.pool.KmipClient` a Deferred firing with it. Results are the
model's typed response payloads (:mod:`kcm.kmip.payloads`), or the one useful field of them
where an operation has one (a Unique Identifier, a list of them, plaintext bytes).

Frequent operations take friendly arguments; every operation is also reachable with the
fields of its request payload as keywords (``client.operation(Operation.SIGN, ...)``, or the
named method such as ``client.sign(unique_identifier=..., data=...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kcm.kmip.attributes import Attribute, AttributeReference, CryptographicParameters
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    KeyFormatType,
    ObjectType,
    Operation,
    QueryFunction,
    RevocationReasonCode,
)
from kcm.kmip.objects import KeyBlock, KeyValue, SymmetricKey
from kcm.kmip.payloads import PAYLOADS, GetAttributesRequest
from kcm.kmip.payloads.crypto import DecryptRequest, EncryptRequest
from kcm.kmip.payloads.lifecycle import (
    ActivateRequest,
    CreateRequest,
    DestroyRequest,
    GetRequest,
    RegisterRequest,
    RevocationReason,
    RevokeRequest,
)
from kcm.kmip.payloads.service import LocateRequest, QueryRequest
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType

__all__ = ["Operations", "l4_marker", "symmetric_attributes"]


def l4_marker() -> Attribute:
    """The custom attribute that makes a Create an L4 (a DEK served by kcm-gateway)."""
    return Attribute.vendor("x", "kcm-level", Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, "L4"))


def symmetric_attributes(algorithm: CryptographicAlgorithm | int, length: int,
                         extra: Sequence[Attribute] = ()) -> list[Attribute]:
    """The Cryptographic Algorithm and Length of a symmetric key, then ``extra``."""
    return [Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, algorithm),
            Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, length), *extra]


def _same(payload: Any) -> Any:
    return payload


def _uid(payload: Any) -> str:
    return payload.unique_identifier


def _nothing(payload: Any) -> None:
    return None


class Operations:
    """One method per KMIP operation; see the module's docstring."""

    def _run(self, operation: Operation, payload: Any, shape: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    # Any operation by its request payload's fields ----------------------------------------

    def operation(self, operation: Operation, **fields: Any) -> Any:
        """Send ``operation`` with a request payload made of ``fields``; the typed response
        payload."""
        model = PAYLOADS.get((operation, True))
        if model is None:
            raise ValueError(f"{operation!r} has no request payload model")
        return self._run(operation, model(**fields), _same)

    # Object creation ------------------------------------------------------------------------

    def create(self, algorithm: CryptographicAlgorithm | int = CryptographicAlgorithm.AES,
               length: int = 256, attributes: Sequence[Attribute] = ()) -> Any:
        """Create a symmetric key; its Unique Identifier."""
        return self._run(Operation.CREATE, CreateRequest(
            object_type=ObjectType.SYMMETRIC_KEY,
            attributes=symmetric_attributes(algorithm, length, attributes)), _uid)

    def create_l4(self, algorithm: CryptographicAlgorithm | int = CryptographicAlgorithm.AES,
                  length: int = 256) -> Any:
        """Create an L4 at kcm-gateway; its token (the Unique Identifier)."""
        return self.create(algorithm, length, [l4_marker()])

    def register_symmetric(self, key: bytes,
                           algorithm: CryptographicAlgorithm | int = CryptographicAlgorithm.AES,
                           attributes: Sequence[Attribute] = ()) -> Any:
        """Register the raw symmetric ``key``; its Unique Identifier."""
        block = KeyBlock(key_format_type=KeyFormatType.RAW, key_value=KeyValue(key_material=key),
                         cryptographic_algorithm=algorithm, cryptographic_length=len(key) * 8)
        return self._run(Operation.REGISTER, RegisterRequest(
            object_type=ObjectType.SYMMETRIC_KEY,
            attributes=symmetric_attributes(algorithm, len(key) * 8, attributes),
            object=SymmetricKey(key_block=block)), _uid)

    def register(self, **fields: Any) -> Any:
        """Register any object (fields of :class:`RegisterRequest`); the response."""
        return self.operation(Operation.REGISTER, **fields)

    def create_key_pair(self, **fields: Any) -> Any:
        """Create Key Pair (fields of its request payload); the response (both identifiers)."""
        return self.operation(Operation.CREATE_KEY_PAIR, **fields)

    def rekey(self, **fields: Any) -> Any:
        """Re-key; the response (the new key's Unique Identifier)."""
        return self.operation(Operation.RE_KEY, **fields)

    def derive_key(self, **fields: Any) -> Any:
        """Derive Key; the response."""
        return self.operation(Operation.DERIVE_KEY, **fields)

    # Reading -------------------------------------------------------------------------------

    def get(self, uid: str) -> Any:
        """Get: the response, its ``object`` the managed object (``.key_block.key_bytes``)."""
        return self._run(Operation.GET, GetRequest(unique_identifier=uid), _same)

    def locate(self, attributes: Sequence[Attribute] = (),
               maximum_items: int | None = None) -> Any:
        """The Unique Identifiers of the objects that have every one of ``attributes``."""
        return self._run(Operation.LOCATE, LocateRequest(
            maximum_items=maximum_items, attributes=list(attributes)),
            lambda payload: list(payload.unique_identifiers))

    def get_attributes(self, uid: str, tags: Sequence[int] = ()) -> Any:
        """The attributes ``tags`` name (all of them when none is named)."""
        return self._run(Operation.GET_ATTRIBUTES, GetAttributesRequest(
            unique_identifier=uid,
            attribute_references=[AttributeReference(tag) for tag in tags]),
            lambda payload: list(payload.attributes or []))

    def get_attribute_list(self, uid: str) -> Any:
        """Get Attribute List; the response."""
        return self.operation(Operation.GET_ATTRIBUTE_LIST, unique_identifier=uid)

    def check(self, **fields: Any) -> Any:
        """Check; the response."""
        return self.operation(Operation.CHECK, **fields)

    # Attributes ------------------------------------------------------------------------------

    def add_attribute(self, **fields: Any) -> Any:
        return self.operation(Operation.ADD_ATTRIBUTE, **fields)

    def modify_attribute(self, **fields: Any) -> Any:
        return self.operation(Operation.MODIFY_ATTRIBUTE, **fields)

    def delete_attribute(self, **fields: Any) -> Any:
        return self.operation(Operation.DELETE_ATTRIBUTE, **fields)

    def set_attribute(self, **fields: Any) -> Any:
        return self.operation(Operation.SET_ATTRIBUTE, **fields)

    def adjust_attribute(self, **fields: Any) -> Any:
        return self.operation(Operation.ADJUST_ATTRIBUTE, **fields)

    # Lifecycle -------------------------------------------------------------------------------

    def activate(self, uid: str) -> Any:
        return self._run(Operation.ACTIVATE, ActivateRequest(unique_identifier=uid), _nothing)

    def revoke(self, uid: str, code: RevocationReasonCode | int = RevocationReasonCode.UNSPECIFIED,
               message: str | None = None, compromise_date: int | None = None) -> Any:
        return self._run(Operation.REVOKE, RevokeRequest(
            unique_identifier=uid,
            revocation_reason=RevocationReason(code=code, message=message),
            compromise_occurrence_date=compromise_date), _nothing)

    def destroy(self, uid: str) -> Any:
        return self._run(Operation.DESTROY, DestroyRequest(unique_identifier=uid), _nothing)

    # Cryptography ------------------------------------------------------------------------------

    def encrypt(self, uid: str, data: bytes, parameters: CryptographicParameters | None = None,
                iv: bytes | None = None, aad: bytes | None = None) -> Any:
        """Encrypt ``data``; the response carries the ciphertext, the IV the server chose (if
        any) and the AEAD tag (AES-GCM)."""
        return self._run(Operation.ENCRYPT, EncryptRequest(
            unique_identifier=uid, cryptographic_parameters=parameters, data=data,
            iv_counter_nonce=iv, authenticated_encryption_additional_data=aad), _same)

    def decrypt(self, uid: str, data: bytes, parameters: CryptographicParameters | None = None,
                iv: bytes | None = None, tag: bytes | None = None,
                aad: bytes | None = None) -> Any:
        """Decrypt ``data``; the plaintext."""
        return self._run(Operation.DECRYPT, DecryptRequest(
            unique_identifier=uid, cryptographic_parameters=parameters, data=data,
            iv_counter_nonce=iv, authenticated_encryption_tag=tag,
            authenticated_encryption_additional_data=aad), lambda payload: payload.data or b"")

    def sign(self, **fields: Any) -> Any:
        return self.operation(Operation.SIGN, **fields)

    def signature_verify(self, **fields: Any) -> Any:
        return self.operation(Operation.SIGNATURE_VERIFY, **fields)

    def mac(self, **fields: Any) -> Any:
        return self.operation(Operation.MAC, **fields)

    def mac_verify(self, **fields: Any) -> Any:
        return self.operation(Operation.MAC_VERIFY, **fields)

    def hash(self, **fields: Any) -> Any:
        return self.operation(Operation.HASH, **fields)

    def rng_retrieve(self, length: int) -> Any:
        """RNG Retrieve: ``length`` random bytes from the server."""
        return self._run(Operation.RNG_RETRIEVE, PAYLOADS[(Operation.RNG_RETRIEVE, True)](
            data_length=length), lambda payload: payload.data)

    def rng_seed(self, data: bytes) -> Any:
        return self.operation(Operation.RNG_SEED, data=data)

    # Server -------------------------------------------------------------------------------------

    def query(self, functions: Sequence[QueryFunction] = (
            QueryFunction.QUERY_OPERATIONS, QueryFunction.QUERY_OBJECTS,
            QueryFunction.QUERY_SERVER_INFORMATION)) -> Any:
        return self._run(Operation.QUERY, QueryRequest(query_functions=list(functions)), _same)

    def discover_versions(self, versions: Sequence[tuple[int, int]] = ()) -> Any:
        """Discover Versions: the versions the server speaks, as ``(major, minor)`` pairs."""
        from kcm.kmip.messages import ProtocolVersion

        request = PAYLOADS[(Operation.DISCOVER_VERSIONS, True)](
            protocol_versions=[ProtocolVersion.of(v) for v in versions])
        return self._run(Operation.DISCOVER_VERSIONS, request, lambda payload: [
            v.as_tuple() for v in payload.protocol_versions])

    def interop(self, **fields: Any) -> Any:
        return self.operation(Operation.INTEROP, **fields)

    def log(self, **fields: Any) -> Any:
        return self.operation(Operation.LOG, **fields)
