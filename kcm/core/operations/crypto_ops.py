"""Encrypt, Decrypt and Check with managed symmetric keys
(KMIP 1.4 §4.29, §4.30, §4.10; 2.1 §6.1.18, §6.1.12, §6.1.3).

What the handlers promise:

* The key is the caller's own (another tenant's is Item Not Found), the policy lets the
  caller use it (:func:`kcm.core.policy.check_key_use`), its state allows the use
  (Encrypt only when Active and before its Protect Stop Date; Decrypt also when
  Deactivated or Compromised, and not before its Process Start Date), its Cryptographic
  Usage Mask, when set, has the Encrypt or Decrypt bit, and its Usage Limits, when set,
  are not exhausted (Encrypt counts against them; KMIP 1.4 §3.21).
* Cryptographic Parameters: the request's fields win over those of the key's Cryptographic
  Parameters attribute (its first instance); what neither says takes the default of the
  key's algorithm: AES-GCM with a 16-byte tag (ARCHITECTURE §2), 3DES-CBC with PKCS#5
  padding, ChaCha20, ChaCha20-Poly1305 (AEAD). Block modes default to no padding.
* Supported: AES with ECB, CBC (padding None or PKCS5), CTR and GCM; 3DES with ECB and
  CBC; ChaCha20 (8- or 12-byte nonce) and ChaCha20-Poly1305.
* The IV / Counter / Nonce is the client's; when the client sends none on Encrypt (or
  Random IV is True) the server draws one from the injected random source and returns
  it. Decrypt without one, for a mode that needs one, is Invalid Message.
* AEAD tags may be truncated to 4, 8 or 12..16 bytes (Tag Length, in bytes); a tag that
  does not verify is Cryptographic Failure, as are bad padding and a ciphertext that is
  not a whole number of blocks.
* Streaming (Init Indicator / Correlation Value / Final Indicator) works for every mode.
  The Correlation Value is the stream's state sealed with AES-GCM under a key derived from
  the object's own key, so any core can continue a stream and a client cannot forge one.
  AEAD decryption releases no plaintext before the tag has been verified.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kcm.core import lifecycle, managed, policy
from kcm.core.batch import operation
from kcm.core.context import OperationContext
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    ObjectType,
    Operation,
    PaddingMethod,
    ResultReason,
    UsageLimitsUnit,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.objects import SymmetricKey
from kcm.kmip.payloads import (
    CheckRequest,
    CheckResponse,
    DecryptRequest,
    DecryptResponse,
    EncryptRequest,
    EncryptResponse,
)
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType

Version = tuple[int, int]

_AES = CryptographicAlgorithm.AES
_DES3 = CryptographicAlgorithm.DES3
_CHACHA20 = CryptographicAlgorithm.CHACHA20
_CHACHA20POLY1305 = CryptographicAlgorithm.CHACHA20POLY1305

#: Block cipher modes per algorithm. None: a stream cipher that takes no mode.
_MODES: dict[int, frozenset[int | None]] = {
    _AES: frozenset({BlockCipherMode.ECB, BlockCipherMode.CBC, BlockCipherMode.CTR,
                     BlockCipherMode.GCM}),
    _DES3: frozenset({BlockCipherMode.ECB, BlockCipherMode.CBC}),
    _CHACHA20: frozenset({None}),
    _CHACHA20POLY1305: frozenset({None, BlockCipherMode.AEAD}),
}
_DEFAULT_MODE: dict[int, int | None] = {
    _AES: BlockCipherMode.GCM, _DES3: BlockCipherMode.CBC,
    _CHACHA20: None, _CHACHA20POLY1305: BlockCipherMode.AEAD,
}
_BLOCK_MODES = frozenset({BlockCipherMode.ECB, BlockCipherMode.CBC})
#: AEAD tag lengths in bytes (NIST SP 800-38D §5.2.1.2 allows 4 and 8 for special uses).
_TAG_LENGTHS = frozenset({4, 8, 12, 13, 14, 15, 16})
_DEFAULT_TAG_LENGTH = 16
#: How much input a stream may carry in its Correlation Value before it is refused.
MAX_STREAM_BYTES = 1 << 20


# Parameters -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CipherSpec:
    """A fully resolved cipher: what the key and the parameters say, defaults applied."""

    algorithm: int
    mode: int | None  # Block Cipher Mode; None for ChaCha20
    padding: int  # PaddingMethod.NONE or PKCS5
    tag_length: int  # bytes; AEAD only
    random_iv: bool
    iv_length: int | None  # bytes, for a generated IV

    @property
    def block_size(self) -> int:
        """Bytes per block; 1 for the modes that work on any length."""
        if self.mode in _BLOCK_MODES:
            return 8 if self.algorithm == _DES3 else 16
        return 1

    @property
    def aead(self) -> bool:
        return self.mode == BlockCipherMode.GCM or self.algorithm == _CHACHA20POLY1305

    @property
    def needs_iv(self) -> bool:
        return self.mode != BlockCipherMode.ECB

    def default_iv_length(self) -> int:
        if self.iv_length is not None:
            return self.iv_length
        if self.mode in (BlockCipherMode.CBC, BlockCipherMode.CTR):
            return 8 if self.algorithm == _DES3 else 16
        return 12  # GCM (NIST SP 800-38D §8.2), ChaCha20 and ChaCha20-Poly1305 (RFC 8439)


def resolve_spec(ctx: OperationContext, obj: managed.StoredObject,
                 requested: CryptographicParameters | None) -> CipherSpec:
    """The cipher an Encrypt or Decrypt will run: request over key attribute over default."""
    algorithm = obj.value(Tag.CRYPTOGRAPHIC_ALGORITHM)
    if algorithm not in _MODES:
        raise _unsupported(ctx.version, f"{_name(CryptographicAlgorithm, algorithm)} keys "
                                        "cannot encrypt here")
    params = _merge(obj.value(Tag.CRYPTOGRAPHIC_PARAMETERS), requested)
    named = params.cryptographic_algorithm
    if named is not None and named != algorithm:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"the parameters name {_name(CryptographicAlgorithm, named)} but the key "
                        f"is {_name(CryptographicAlgorithm, algorithm)}")
    mode = params.block_cipher_mode
    padding = params.padding_method
    if mode is None:
        mode = _DEFAULT_MODE[algorithm]
        if algorithm == _DES3 and padding is None:
            padding = PaddingMethod.PKCS5
    mode = None if mode is None else int(mode)
    if algorithm == _CHACHA20POLY1305:
        mode = BlockCipherMode.AEAD if mode in (None, BlockCipherMode.AEAD) else mode
    if mode not in _MODES[algorithm]:
        raise _unsupported(ctx.version, f"block cipher mode {_name(BlockCipherMode, mode)} is "
                                        "not supported with "
                                        f"{_name(CryptographicAlgorithm, algorithm)}")
    padding = PaddingMethod.NONE if padding is None else int(padding)
    if padding not in (PaddingMethod.NONE, PaddingMethod.PKCS5) or (
            padding == PaddingMethod.PKCS5 and mode not in _BLOCK_MODES):
        raise _unsupported(ctx.version, f"padding method {_name(PaddingMethod, padding)} is not "
                                        f"supported with mode {_name(BlockCipherMode, mode)}")
    tag_length = params.tag_length if params.tag_length is not None else _DEFAULT_TAG_LENGTH
    aead = mode in (BlockCipherMode.GCM, BlockCipherMode.AEAD)
    if aead and tag_length not in _TAG_LENGTHS:
        # The OASIS CS-BC-M-GCM-1 and CHACHA20POLY1305-1 cases expect General Failure here.
        raise KmipError(ResultReason.GENERAL_FAILURE,
                        f"invalid tag length {tag_length}; use one of {sorted(_TAG_LENGTHS)} bytes")
    iv_length = None
    if params.iv_length is not None:
        # IV Length is in bits (KMIP 1.4 §3.6, 2.1 §4.15).
        if params.iv_length <= 0 or params.iv_length % 8:
            raise KmipError(ResultReason.INVALID_FIELD,
                            f"IV Length {params.iv_length} is not a whole number of bytes")
        iv_length = params.iv_length // 8
    return CipherSpec(int(algorithm), mode, padding, tag_length, bool(params.random_iv),
                      iv_length)


def _merge(stored: object, requested: CryptographicParameters | None) -> CryptographicParameters:
    base = stored if isinstance(stored, CryptographicParameters) else CryptographicParameters()
    if requested is None:
        return base
    overrides = {name: getattr(requested, name) for name in _PARAMETER_FIELDS
                 if getattr(requested, name) is not None}
    return replace(base, **overrides)


_PARAMETER_FIELDS = ("block_cipher_mode", "padding_method", "cryptographic_algorithm",
                     "random_iv", "iv_length", "tag_length")


def _check_iv(spec: CipherSpec, iv: bytes) -> None:
    mode = spec.mode
    if mode in (BlockCipherMode.CBC, BlockCipherMode.CTR):
        size = 8 if spec.algorithm == _DES3 else 16
        ok, expected = len(iv) == size, f"{size} bytes"
    elif mode == BlockCipherMode.GCM:
        ok, expected = 8 <= len(iv) <= 128, "8 to 128 bytes"
    elif spec.algorithm == _CHACHA20:
        ok, expected = len(iv) in (8, 12, 16), "8, 12 or 16 bytes"
    elif spec.algorithm == _CHACHA20POLY1305:
        ok, expected = len(iv) == 12, "12 bytes"
    else:
        return
    if not ok:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"the IV/Counter/Nonce is {len(iv)} bytes; this mode takes {expected}")


# The ciphers --------------------------------------------------------------------
def _block_cipher(spec: CipherSpec, key: bytes, iv: bytes) -> Cipher:
    algorithm: CipherAlgorithm
    if spec.algorithm == _DES3:
        algorithm = TripleDES(key)
    elif spec.algorithm == _CHACHA20:
        # cryptography takes a 16-byte block: a little-endian counter, then the nonce. An
        # 8-byte nonce is the original ChaCha20 (64-bit counter) the OASIS cases use.
        nonce = iv if len(iv) == 16 else bytes(16 - len(iv)) + iv
        return Cipher(algorithms.ChaCha20(key, nonce), mode=None)
    elif spec.algorithm == _CHACHA20POLY1305:
        # RFC 8439 §2.8: the payload is enciphered from block counter 1.
        return Cipher(algorithms.ChaCha20(key, (1).to_bytes(4, "little") + iv), mode=None)
    else:
        algorithm = algorithms.AES(key)
    mode = spec.mode
    if mode == BlockCipherMode.ECB:
        return Cipher(algorithm, modes.ECB())
    if mode == BlockCipherMode.CBC:
        return Cipher(algorithm, modes.CBC(iv))
    if mode == BlockCipherMode.CTR:
        return Cipher(algorithm, modes.CTR(iv))
    return Cipher(algorithm, modes.GCM(iv))  # keystream only; tags are handled apart


def _raw(spec: CipherSpec, key: bytes, iv: bytes, data: bytes, *, encrypt: bool,
         aad: bytes | None) -> bytes:
    """The mode applied to ``data`` with no padding and no tag (a prefix of the result
    of a one-shot run over a longer input that starts with ``data``)."""
    cipher = _block_cipher(spec, key, iv)
    context = cipher.encryptor() if encrypt else cipher.decryptor()
    if spec.mode == BlockCipherMode.GCM and aad:
        context.authenticate_additional_data(aad)
    return context.update(data)


def encrypt_once(spec: CipherSpec, key: bytes, iv: bytes, data: bytes,
                 aad: bytes | None) -> tuple[bytes, bytes | None]:
    """Encrypt a whole message: (ciphertext, tag or None)."""
    if spec.padding == PaddingMethod.PKCS5:
        padder = sym_padding.PKCS7(spec.block_size * 8).padder()
        data = padder.update(data) + padder.finalize()
    elif len(data) % spec.block_size:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"Data is {len(data)} bytes; without padding this mode takes a multiple "
                        f"of {spec.block_size}")
    if spec.algorithm == _CHACHA20POLY1305:
        sealed = ChaCha20Poly1305(key).encrypt(iv, data, aad or None)
        return sealed[:-16], sealed[-16:][:spec.tag_length]
    if spec.mode == BlockCipherMode.GCM:
        if len(iv) == 12:
            sealed = AESGCM(key).encrypt(iv, data, aad or None)
            return sealed[:-16], sealed[-16:][:spec.tag_length]
        encryptor = _block_cipher(spec, key, iv).encryptor()
        if aad:
            encryptor.authenticate_additional_data(aad)
        ciphertext = encryptor.update(data) + encryptor.finalize()
        return ciphertext, encryptor.tag[:spec.tag_length]
    encryptor = _block_cipher(spec, key, iv).encryptor()
    return encryptor.update(data) + encryptor.finalize(), None


def decrypt_once(spec: CipherSpec, key: bytes, iv: bytes, data: bytes, aad: bytes | None,
                 tag: bytes | None) -> bytes:
    """Decrypt a whole message; Cryptographic Failure if it does not verify or unpad."""
    if spec.aead:
        if tag is None:
            raise KmipError(ResultReason.INVALID_MESSAGE,
                            "Decrypt in an AEAD mode needs the Authenticated Encryption Tag")
        if len(tag) not in _TAG_LENGTHS:
            raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE, "the tag does not verify")
        if spec.mode == BlockCipherMode.GCM:
            decryptor = Cipher(algorithms.AES(key), modes.GCM(iv, tag, min_tag_length=4)
                               ).decryptor()
            if aad:
                decryptor.authenticate_additional_data(aad)
            try:
                return decryptor.update(data) + decryptor.finalize()
            except InvalidTag:
                raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                                "the tag does not verify") from None
        # ChaCha20-Poly1305 takes only full tags: recompute it and compare the prefix.
        plaintext = _raw(spec, key, iv, data, encrypt=False, aad=aad)
        expected = ChaCha20Poly1305(key).encrypt(iv, plaintext, aad or None)[-16:]
        if not hmac.compare_digest(expected[:len(tag)], tag):
            raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE, "the tag does not verify")
        return plaintext
    if len(data) % spec.block_size:
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                        f"the ciphertext is {len(data)} bytes, not a multiple of "
                        f"{spec.block_size}")
    decryptor = _block_cipher(spec, key, iv).decryptor()
    plaintext = decryptor.update(data) + decryptor.finalize()
    if spec.padding == PaddingMethod.PKCS5:
        unpadder = sym_padding.PKCS7(spec.block_size * 8).unpadder()
        try:
            plaintext = unpadder.update(plaintext) + unpadder.finalize()
        except ValueError:
            raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE, "bad padding") from None
    return plaintext


def partial(spec: CipherSpec, key: bytes, iv: bytes, data: bytes, *, encrypt: bool,
            aad: bytes | None) -> bytes:
    """What a stream can release before its last part: the output of the longest prefix
    of ``data`` whose result no later input can change."""
    if not encrypt and spec.aead:
        return b""  # nothing before the tag has been verified
    size = spec.block_size
    safe = len(data) - len(data) % size
    if not encrypt and spec.padding == PaddingMethod.PKCS5 and safe == len(data) and safe:
        safe -= size  # the last block may be padding
    return _raw(spec, key, iv, data[:safe], encrypt=encrypt, aad=aad)


# Streams ------------------------------------------------------------------------
@dataclass(slots=True)
class StreamState:
    """One Encrypt or Decrypt stream between its parts (carried by the Correlation Value)."""

    encrypt: bool
    spec: CipherSpec
    iv: bytes
    aad: bytes
    data: bytes  # all input so far
    released: int  # output bytes already returned

    def pack(self) -> bytes:
        spec = self.spec
        head = struct.pack(">BIIIIBIQ", self.encrypt, spec.algorithm, spec.mode or 0,
                           spec.padding, spec.tag_length, spec.random_iv,
                           spec.iv_length or 0, self.released)
        return head + b"".join(struct.pack(">I", len(v)) + v
                               for v in (self.iv, self.aad, self.data))

    @classmethod
    def unpack(cls, blob: bytes) -> StreamState:
        head = struct.calcsize(">BIIIIBIQ")
        encrypt, algorithm, mode, padding, tag_length, random_iv, iv_length, released = \
            struct.unpack(">BIIIIBIQ", blob[:head])
        values, offset = [], head
        for _ in range(3):
            (length,) = struct.unpack(">I", blob[offset:offset + 4])
            values.append(blob[offset + 4:offset + 4 + length])
            offset += 4 + length
        spec = CipherSpec(algorithm, mode or None, padding, tag_length, bool(random_iv),
                          iv_length or None)
        return cls(bool(encrypt), spec, values[0], values[1], values[2], released)


_STREAM_FORMAT = b"\x01"


def _stream_key(key: bytes, uid: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"kcm stream state v1 " + uid.encode()).derive(key)


def seal_stream(ctx: OperationContext, key: bytes, uid: str, state: StreamState) -> bytes:
    """The Correlation Value for ``state``: sealed under a key derived from ``key``."""
    nonce = ctx.random_bytes(12)
    return _STREAM_FORMAT + nonce + AESGCM(_stream_key(key, uid)).encrypt(
        nonce, state.pack(), uid.encode())


def open_stream(ctx: OperationContext, key: bytes, uid: str, value: bytes) -> StreamState:
    """The state a Correlation Value carries; refused if it is not one of this key's."""
    try:
        if value[:1] != _STREAM_FORMAT:
            raise InvalidTag
        blob = AESGCM(_stream_key(key, uid)).decrypt(value[1:13], value[13:], uid.encode())
        return StreamState.unpack(blob)
    except (InvalidTag, ValueError, struct.error):
        reason = (ResultReason.INVALID_CORRELATION_VALUE if ctx.version >= (2, 0)
                  else ResultReason.INVALID_FIELD)
        raise KmipError(reason, "the Correlation Value is not one of this key's streams") \
            from None


# Handlers -----------------------------------------------------------------------
@operation(Operation.ENCRYPT)
def encrypt(ctx: OperationContext, request: EncryptRequest) -> EncryptResponse:
    obj = _usable_key(ctx, request.unique_identifier, protect=True)
    data = _data(request.data)
    _consume_usage(ctx, obj, data, first=request.correlation_value is None)
    key = _key_bytes(ctx, obj)
    response = EncryptResponse(unique_identifier=obj.uid)
    if request.correlation_value is not None:
        state = _continue(ctx, key, obj.uid, request.correlation_value, data, encrypt=True)
        spec, iv = state.spec, state.iv
    else:
        spec = resolve_spec(ctx, obj, request.cryptographic_parameters)
        iv = request.iv_counter_nonce
        if spec.random_iv and iv is not None:
            raise KmipError(ResultReason.INVALID_FIELD,
                            "Random IV is set: the server chooses the IV; send none")
        if iv is None and spec.needs_iv:
            iv = ctx.random_bytes(spec.default_iv_length())
            response.iv_counter_nonce = iv
        iv = iv or b""
        _check_iv(spec, iv)
        state = StreamState(True, spec, iv, request.authenticated_encryption_additional_data
                            or b"", data, 0)
    _audit(ctx, spec, len(data))
    with _cryptographic_failure():
        if _streaming(request) and not request.final_indicator:
            _bound_stream(ctx, state)
            output = partial(spec, key, iv, state.data, encrypt=True, aad=state.aad)
            response.data = output[state.released:]
            state.released = len(output)
            response.correlation_value = seal_stream(ctx, key, obj.uid, state)
            return response
        ciphertext, tag = encrypt_once(spec, key, iv, state.data, state.aad)
    response.data = ciphertext[state.released:]
    response.authenticated_encryption_tag = tag
    return response


@operation(Operation.DECRYPT)
def decrypt(ctx: OperationContext, request: DecryptRequest) -> DecryptResponse:
    obj = _usable_key(ctx, request.unique_identifier, protect=False)
    data = _data(request.data)
    key = _key_bytes(ctx, obj)
    response = DecryptResponse(unique_identifier=obj.uid)
    if request.correlation_value is not None:
        state = _continue(ctx, key, obj.uid, request.correlation_value, data, encrypt=False)
        spec, iv = state.spec, state.iv
    else:
        spec = resolve_spec(ctx, obj, request.cryptographic_parameters)
        iv = request.iv_counter_nonce
        if iv is None and spec.needs_iv:
            # The OASIS CS-BC-M-11..13 cases expect Invalid Message for a missing IV.
            raise KmipError(ResultReason.INVALID_MESSAGE,
                            "missing-iv: this mode needs the IV/Counter/Nonce")
        iv = iv or b""
        _check_iv(spec, iv)
        state = StreamState(False, spec, iv, request.authenticated_encryption_additional_data
                            or b"", data, 0)
    _audit(ctx, spec, len(data))
    with _cryptographic_failure():
        if _streaming(request) and not request.final_indicator:
            _bound_stream(ctx, state)
            output = partial(spec, key, iv, state.data, encrypt=False, aad=state.aad)
            response.data = output[state.released:]
            state.released = len(output)
            response.correlation_value = seal_stream(ctx, key, obj.uid, state)
            return response
        plaintext = decrypt_once(spec, key, iv, state.data, state.aad,
                                 request.authenticated_encryption_tag)
    response.data = plaintext[state.released:]
    return response


@operation(Operation.CHECK)
def check(ctx: OperationContext, request: CheckRequest) -> CheckResponse:
    """Could the caller use the object as described? The object's state is not judged
    (the OASIS BL-M-2 case checks a Pre-Active key); its policy, usage mask, remaining
    usage and lease are. On failure the ID Placeholder is emptied (KMIP 1.4 §4.10)."""
    uid = ctx.id_placeholder.resolve(request.unique_identifier)
    ctx.id_placeholder.value = None
    obj = managed.load(ctx, uid, for_update=False)
    policy.check_key_use(ctx.principal, obj.level, obj.row.service)
    wanted_mask = request.cryptographic_usage_mask
    if wanted_mask is not None and not _mask_allows(obj, wanted_mask):
        raise _usage_mask_error(ctx.version, "Check failed: the object's Cryptographic Usage "
                                             "Mask does not allow " + _mask_names(wanted_mask))
    wanted_count = request.usage_limits_count
    if wanted_count is not None:
        remaining = _usage_remaining(obj)
        if remaining is not None and remaining[0] < wanted_count:
            raise KmipError(_version_reason(ctx.version, ResultReason.USAGE_LIMIT_EXCEEDED),
                            f"Check failed: {remaining[0]} usage left, {wanted_count} asked")
    lease = obj.value(Tag.LEASE_TIME)
    if request.lease_time is not None and lease is not None and request.lease_time > lease:
        raise KmipError(ResultReason.PERMISSION_DENIED,
                        f"Check failed: the lease is at most {lease} seconds")
    ctx.id_placeholder.set(obj.uid)
    return CheckResponse(unique_identifier=obj.uid)


# Helpers ------------------------------------------------------------------------
def _usable_key(ctx: OperationContext, unique_identifier: str | Item | None, *,
                protect: bool) -> managed.StoredObject:
    uid = ctx.id_placeholder.resolve(unique_identifier)
    obj = managed.load(ctx, uid, for_update=protect)
    if obj.object_type != ObjectType.SYMMETRIC_KEY:
        if obj.object_type in (ObjectType.PUBLIC_KEY, ObjectType.PRIVATE_KEY):
            raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                            "asymmetric encryption is not supported")
        raise KmipError(_version_reason(ctx.version, ResultReason.INVALID_OBJECT_TYPE,
                                        ResultReason.ILLEGAL_OPERATION),
                        f"a {_name(ObjectType, obj.object_type)} cannot encrypt or decrypt")
    policy.check_key_use(ctx.principal, obj.level, obj.row.service)
    state = obj.state
    verb = "encrypt" if protect else "decrypt"
    if not lifecycle.usable_for(state, protect=protect):
        raise lifecycle.wrong_state(ctx.version, f"a key in state {state.name} cannot {verb}")
    if protect:
        stop = obj.value(Tag.PROTECT_STOP_DATE)
        if stop is not None and ctx.now >= stop:
            raise lifecycle.wrong_state(ctx.version, "the key's Protect Stop Date has passed")
    else:
        start = obj.value(Tag.PROCESS_START_DATE)
        if start is not None and ctx.now < start:
            raise lifecycle.wrong_state(ctx.version, "the key's Process Start Date is ahead")
    needed = CryptographicUsageMask.ENCRYPT if protect else CryptographicUsageMask.DECRYPT
    if not _mask_allows(obj, needed):
        raise _usage_mask_error(ctx.version,
                                f"the key's Cryptographic Usage Mask does not allow {verb}")
    return obj


def _key_bytes(ctx: OperationContext, obj: managed.StoredObject) -> bytes:
    key = managed.material(ctx, obj)
    key_bytes = key.key_block.key_bytes if isinstance(key, SymmetricKey) else None
    if key_bytes is None:
        raise KmipError(_version_reason(ctx.version, ResultReason.KEY_VALUE_NOT_PRESENT,
                                        ResultReason.CRYPTOGRAPHIC_FAILURE),
                        "the key material is not available in the clear to the server")
    return key_bytes


@contextmanager
def _cryptographic_failure() -> Iterator[None]:
    """The library refuses what we did not check ourselves (a key of the wrong length
    for its algorithm, say): that is the request's Cryptographic Failure, not ours."""
    try:
        yield
    except ValueError as e:
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE, str(e)) from None


def _data(data: bytes | None) -> bytes:
    if data is None:
        raise KmipError(ResultReason.INVALID_MESSAGE, "the request has no Data")
    return data


def _streaming(request: EncryptRequest | DecryptRequest) -> bool:
    return bool(request.init_indicator) or request.correlation_value is not None


def _continue(ctx: OperationContext, key: bytes, uid: str, value: bytes, data: bytes, *,
              encrypt: bool) -> StreamState:
    """The stream a Correlation Value continues, with ``data`` appended."""
    state = open_stream(ctx, key, uid, value)
    if state.encrypt != encrypt:
        raise KmipError(_version_reason(ctx.version, ResultReason.INVALID_CORRELATION_VALUE,
                                        ResultReason.INVALID_FIELD),
                        "the Correlation Value belongs to a stream of the other operation")
    state.data += data
    _bound_stream(ctx, state)
    return state


def _bound_stream(ctx: OperationContext, state: StreamState) -> None:
    # The Correlation Value carries the whole input so far; keep it (and answers) small.
    if len(state.data) > MAX_STREAM_BYTES:
        raise KmipError(_version_reason(ctx.version, ResultReason.SERVER_LIMIT_EXCEEDED,
                                        ResultReason.FEATURE_NOT_SUPPORTED),
                        f"streams are limited to {MAX_STREAM_BYTES} bytes")


def _mask_allows(obj: managed.StoredObject, wanted: int) -> bool:
    mask = obj.value(Tag.CRYPTOGRAPHIC_USAGE_MASK)
    return mask is None or (int(mask) & wanted) == wanted


def _usage_mask_error(version: Version, message: str) -> KmipError:
    # KMIP 1.x has no Incompatible Cryptographic Usage Mask; Permission Denied stands in.
    return KmipError(_version_reason(version, ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK),
                     message)


def _version_reason(version: Version, reason_2x: ResultReason,
                    reason_1x: ResultReason = ResultReason.PERMISSION_DENIED) -> ResultReason:
    return reason_2x if version >= (2, 0) else reason_1x


def _usage_remaining(obj: managed.StoredObject) -> tuple[int, int | None] | None:
    """(remaining, unit) of the object's Usage Limits, or None when it has none."""
    attribute = obj.first(Tag.USAGE_LIMITS)
    if attribute is None or attribute.value is None or attribute.value.type is not \
            ItemType.STRUCTURE:
        return None
    fields = {child.tag: child.value for child in attribute.value.value}
    remaining = fields.get(Tag.USAGE_LIMITS_COUNT, fields.get(Tag.USAGE_LIMITS_TOTAL))
    if remaining is None:
        return None
    return int(remaining), fields.get(Tag.USAGE_LIMITS_UNIT)


def _consume_usage(ctx: OperationContext, obj: managed.StoredObject, data: bytes, *,
                   first: bool) -> None:
    """Count an Encrypt against the key's Usage Limits (KMIP 1.4 §3.21: only protection
    counts). The OASIS CS-BC-M-7 cases expect Permission Denied once it is used up."""
    usage = _usage_remaining(obj)
    if usage is None:
        return
    remaining, unit = usage
    amount = len(data) if unit == UsageLimitsUnit.BYTE else int(first)
    if amount > remaining:
        raise KmipError(ResultReason.PERMISSION_DENIED,
                        f"the key's usage limit is used up ({remaining} left, {amount} needed)")
    attribute = obj.first(Tag.USAGE_LIMITS)
    assert attribute is not None and attribute.value is not None
    children = [c for c in attribute.value.value if c.tag != Tag.USAGE_LIMITS_COUNT]
    count = Item(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER, remaining - amount)
    # Total, Count, Unit is the spec's order (KMIP 1.4 §3.21, 2.1 §4.63).
    position = 1 if children and children[0].tag == Tag.USAGE_LIMITS_TOTAL else 0
    children.insert(position, count)
    obj.set(Tag.USAGE_LIMITS, children, ItemType.STRUCTURE)
    managed.save(ctx, obj)


def _audit(ctx: OperationContext, spec: CipherSpec, length: int) -> None:
    ctx.audit_detail["algorithm"] = _name(CryptographicAlgorithm, spec.algorithm)
    if spec.mode is not None:
        ctx.audit_detail["mode"] = _name(BlockCipherMode, spec.mode)
    ctx.audit_detail["bytes"] = length


def _unsupported(version: Version, message: str) -> KmipError:
    return KmipError(_version_reason(version, ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS,
                                     ResultReason.FEATURE_NOT_SUPPORTED), message)


def _mask_names(mask: int) -> str:
    names = [flag.name for flag in CryptographicUsageMask if flag.value & mask and flag.name]
    return " ".join(names) or str(mask)


def _name(enum: type, value: object) -> str:
    if value is None:
        return "none"
    try:
        return enum(value).name
    except ValueError:
        return f"0x{int(value):08X}"  # type: ignore[call-overload]
