"""L4 tokens: a DEK sealed into its own Unique Identifier (docs/link-protocol.md §3). Pure.

    l4.1.<base64url, no padding, of: l3 uuid (16) || nonce (12) || AES-256-GCM(DEK) (len+16)>

The DEK (16, 24 or 32 bytes) is encrypted under the L3 version the uuid names, with the
associated data ``"l4.1" || l3 uuid || len(tenant) || tenant || len(service) || service``
(lengths: 2 bytes, big-endian, of the UTF-8 text), so a token opens only under its own L3
version, tenant and service.

A token has exactly one spelling (canonical base64url, canonical L3 uuid), so its TokenId,
the hash of its text, is a stable name for tombstones: a revoked token cannot come back
spelled differently. Anything that is not such a token raises :class:`TokenError`, and
nothing else.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag

from kcm.l4.identifiers import l3_uid_from_uuid, l3_uuid_bytes
from kcm.l4.service_key import ServiceKey

PREFIX = "l4.1."
_HEADER = b"l4.1"
NONCE_LENGTH = 12
_TAG_LENGTH = 16
_UUID_LENGTH = 16
DEK_LENGTHS = frozenset({16, 24, 32})
_SEALED_LENGTHS = frozenset(n + _TAG_LENGTH for n in DEK_LENGTHS)
_BODY_LENGTHS = frozenset(_UUID_LENGTH + NONCE_LENGTH + n for n in _SEALED_LENGTHS)
#: Characters of a base64url body (RFC 4648 §5) and the longest body a token may have.
_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_MAX_TEXT = len(PREFIX) + (max(_BODY_LENGTHS) * 4 + 2) // 3


class TokenError(ValueError):
    """The text is not an L4 token of this format, or does not open under the given L3."""


@dataclass(frozen=True, slots=True)
class SealedToken:
    """A parsed token: the L3 it is sealed under, its nonce and the sealed DEK (with tag)."""

    l3_uid: str
    nonce: bytes
    ciphertext: bytes
    #: The 16 UUID bytes of ``l3_uid``, as the token carries them.
    l3_uuid: bytes = field(default=b"", repr=False, compare=False)
    #: The token's TokenId (see :func:`token_id`).
    token_id: str = field(default="", compare=False)


def associated_data(l3_uuid: bytes, tenant: str, service: str) -> bytes:
    """The AES-GCM associated data that binds a token to its L3 version, tenant, service."""
    tenant_bytes = tenant.encode()
    service_bytes = service.encode()
    return b"".join((_HEADER, l3_uuid, len(tenant_bytes).to_bytes(2, "big"), tenant_bytes,
                     len(service_bytes).to_bytes(2, "big"), service_bytes))


def is_binding(aad: bytes | None) -> bool:
    """Whether ``aad`` could be a token's associated data (it begins with the token header).

    A service key seals tokens and also wraps clients' DEKs (Encrypt/Decrypt with an L3):
    the engine refuses a client's associated data for which this holds, so no client
    operation under an L3 can ever make or open a token's ciphertext (one key, one
    purpose: the two uses never share an associated data)."""
    return aad is not None and aad.startswith(_HEADER)


def _binding(l3: ServiceKey) -> tuple[bytes, bytes]:
    """(the L3 version's uuid bytes, the associated data binding its tokens to it)."""
    l3_uuid = l3_uuid_bytes(l3.uid)
    return l3_uuid, associated_data(l3_uuid, l3.tenant, l3.service)


def seal(l3: ServiceKey, dek: bytes, nonce: bytes) -> str:
    """The token of ``dek`` sealed under ``l3`` with ``nonce`` (12 fresh random bytes).

    The caller decides whether ``l3`` may protect (is Active); this only encrypts.
    """
    if len(dek) not in DEK_LENGTHS:
        raise ValueError(f"a DEK is 16, 24 or 32 bytes, not {len(dek)}")
    if len(nonce) != NONCE_LENGTH:
        raise ValueError(f"the nonce is {NONCE_LENGTH} bytes, not {len(nonce)}")
    l3_uuid, aad = l3.derived("token-binding", _binding)
    sealed = l3.aesgcm().encrypt(nonce, dek, aad)
    body = base64.urlsafe_b64encode(l3_uuid + nonce + sealed).rstrip(b"=")
    return PREFIX + body.decode("ascii")


def parse(token: str) -> SealedToken:
    """The parts of ``token``; TokenError unless it is exactly a version-1 token.

    A data plane sees the same tokens again and again (every record of a file under one
    L4): the parts of the last :data:`PARSED_CACHE` well-formed tokens are kept (they are
    public: the sealed DEK stays sealed)."""
    if not isinstance(token, str):
        raise TokenError("not an L4 token (l4.1.)")
    return _parse_cached(token)


#: How many parsed tokens :func:`parse` keeps (least recently used go first).
PARSED_CACHE = 4096


@functools.lru_cache(maxsize=PARSED_CACHE)
def _parse_cached(token: str) -> SealedToken:
    if not isinstance(token, str) or not token.startswith(PREFIX) or len(token) > _MAX_TEXT:
        raise TokenError("not an L4 token (l4.1.)")
    text = token[len(PREFIX):]
    if not _ALPHABET.issuperset(text):
        raise TokenError("an L4 token's body is base64url without padding")
    try:
        body = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("an L4 token's body is base64url without padding") from None
    if len(body) not in _BODY_LENGTHS:
        raise TokenError("an L4 token has the wrong length")
    if base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii") != text:
        # Unused low bits set in the last character: another spelling of a real token.
        raise TokenError("an L4 token's body is not canonical base64url")
    nonce_end = _UUID_LENGTH + NONCE_LENGTH
    l3_uuid = body[:_UUID_LENGTH]
    return SealedToken(l3_uid_from_uuid(l3_uuid), body[_UUID_LENGTH:nonce_end],
                       body[nonce_end:], l3_uuid, _digest(token))


def open(token: str, l3: ServiceKey) -> bytes:
    """The DEK sealed in ``token``; TokenError if it is not sealed under ``l3`` (another
    L3, version, tenant or service, or a forged or damaged token)."""
    sealed = parse(token)
    if sealed.l3_uid != l3.uid:
        raise TokenError("the token is sealed under another service key")
    return open_sealed(sealed, l3)


def open_sealed(sealed: SealedToken, l3: ServiceKey) -> bytes:
    """As :func:`open`, for a token already parsed."""
    if sealed.l3_uid != l3.uid or len(l3.key) != 32:
        raise TokenError("the token is sealed under another service key")
    aad = l3.derived("token-binding", _binding)[1]  # (sealed.l3_uid is l3.uid: one binding)
    try:
        return l3.aesgcm().decrypt(sealed.nonce, sealed.ciphertext, aad)
    except InvalidTag:
        raise TokenError("the token does not open under its service key") from None


def token_id(token: str) -> str:
    """The TokenId that names ``token`` in tombstones: hex SHA-256 of its text, 32 digits.

    TokenError unless ``token`` is a well-formed token (only those have one spelling).
    """
    return parse(token).token_id


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()[:32]
