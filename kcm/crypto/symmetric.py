"""Symmetric encryption as KMIP's Encrypt and Decrypt define it, free of stored objects.

Shared by kcm-core's Encrypt/Decrypt with managed keys (:mod:`kcm.core.operations.crypto_ops`)
and the L4 engine (:mod:`kcm.l4.engine`), so both answer alike. What it promises:

* Cryptographic Parameters: the request's fields win over the key's stored Cryptographic
  Parameters; what neither says takes the default of the key's algorithm: AES-GCM with a
  16-byte tag and a 12-byte IV (ARCHITECTURE §2), 3DES-CBC with PKCS#5 padding, ChaCha20,
  ChaCha20-Poly1305 (AEAD). Block modes default to no padding.
* Supported: AES with ECB, CBC (padding None or PKCS5), CTR and GCM; 3DES with ECB and
  CBC; ChaCha20 (8- or 12-byte nonce) and ChaCha20-Poly1305. Anything else is refused
  with Unsupported Cryptographic Parameters (the kernel answers 1.x with Feature Not
  Supported).
* The IV / Counter / Nonce is the client's; when the client sends none on Encrypt (or
  Random IV is True) one is drawn from the injected random source and returned. A GCM IV
  the server draws is never shorter than 96 bits (NIST SP 800-38D §8.2.2): an IV Length
  under 96 without an IV of the client's is Unsupported Cryptographic Parameters. Decrypt
  without one, for a mode that needs one, is Invalid Message.
* AEAD tags may be truncated to 4, 8 or 12..16 bytes (Tag Length, in bytes). A Decrypt's
  tag must be exactly the Tag Length in force (the request's, else the key's, else 16): a
  shorter prefix of a longer tag is not accepted. A tag of another length or that does not
  verify is Cryptographic Failure, as are bad padding and a ciphertext that is not a whole
  number of blocks.

Pure: no stored objects, no I/O; the random source is the caller's.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from kcm.crypto.errors import unsupported
from kcm.crypto.parameters import merge_parameters
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import BlockCipherMode, CryptographicAlgorithm, PaddingMethod, ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label

RandomBytes = Callable[[int], bytes]

_AES = CryptographicAlgorithm.AES
_DES3 = CryptographicAlgorithm.DES3
_CHACHA20 = CryptographicAlgorithm.CHACHA20
_CHACHA20POLY1305 = CryptographicAlgorithm.CHACHA20POLY1305

#: Block cipher modes per algorithm. None: a stream cipher that takes no mode.
MODES: dict[int, frozenset[int | None]] = {
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
TAG_LENGTHS = frozenset({4, 8, 12, 13, 14, 15, 16})
DEFAULT_TAG_LENGTH = 16
#: The shortest GCM IV the server draws, in bytes (NIST SP 800-38D §8.2.2: a random IV
#: of at least 96 bits).
GCM_MIN_GENERATED_IV = 12


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


#: What an AES key with no parameters at all runs: GCM, 16-byte tag, a 12-byte IV.
AES_GCM_DEFAULT = CipherSpec(int(_AES), int(BlockCipherMode.GCM), int(PaddingMethod.NONE),
                             DEFAULT_TAG_LENGTH, False, None)


def resolve_spec(algorithm: int | None, stored: object,
                 requested: CryptographicParameters | None) -> CipherSpec:
    """The cipher an Encrypt or Decrypt will run with a key of ``algorithm`` whose stored
    Cryptographic Parameters are ``stored`` (or None): request over stored over default."""
    if algorithm not in MODES:
        raise unsupported(f"{enum_label(CryptographicAlgorithm, algorithm)} keys "
                                   "cannot encrypt here")
    params = merge_parameters(stored, requested, PARAMETER_FIELDS)
    named = params.cryptographic_algorithm
    if named is not None and named != algorithm:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"the parameters name {enum_label(CryptographicAlgorithm, named)} but "
                        f"the key is {enum_label(CryptographicAlgorithm, algorithm)}")
    mode = params.block_cipher_mode
    padding = params.padding_method
    if mode is None:
        mode = _DEFAULT_MODE[algorithm]
        if algorithm == _DES3 and padding is None:
            padding = PaddingMethod.PKCS5
    mode = None if mode is None else int(mode)
    if algorithm == _CHACHA20POLY1305:
        mode = BlockCipherMode.AEAD if mode in (None, BlockCipherMode.AEAD) else mode
    if mode not in MODES[algorithm]:
        raise unsupported(f"block cipher mode {enum_label(BlockCipherMode, mode)} is "
                                   "not supported with "
                                   f"{enum_label(CryptographicAlgorithm, algorithm)}")
    padding = PaddingMethod.NONE if padding is None else int(padding)
    if padding not in (PaddingMethod.NONE, PaddingMethod.PKCS5) or (
            padding == PaddingMethod.PKCS5 and mode not in _BLOCK_MODES):
        raise unsupported(f"padding method {enum_label(PaddingMethod, padding)} is not "
                                   f"supported with mode {enum_label(BlockCipherMode, mode)}")
    tag_length = params.tag_length if params.tag_length is not None else DEFAULT_TAG_LENGTH
    aead = mode in (BlockCipherMode.GCM, BlockCipherMode.AEAD)
    if aead and tag_length not in TAG_LENGTHS:
        # The OASIS CS-BC-M-GCM-1 and CHACHA20POLY1305-1 cases expect General Failure here.
        raise KmipError(ResultReason.GENERAL_FAILURE,
                        f"invalid tag length {tag_length}; use one of {sorted(TAG_LENGTHS)} bytes")
    iv_length = None
    if params.iv_length is not None:
        # IV Length is in bits (KMIP 1.4 §3.6, 2.1 §4.15).
        if params.iv_length <= 0 or params.iv_length % 8:
            raise KmipError(ResultReason.INVALID_FIELD,
                            f"IV Length {params.iv_length} is not a whole number of bytes")
        iv_length = params.iv_length // 8
    return CipherSpec(int(algorithm), mode, padding, tag_length, bool(params.random_iv),
                      iv_length)


#: The fields of Cryptographic Parameters that decide a cipher (:func:`resolve_spec`).
PARAMETER_FIELDS = ("block_cipher_mode", "padding_method", "cryptographic_algorithm",
                     "random_iv", "iv_length", "tag_length")


# IVs ------------------------------------------------------------------------------
def encrypt_iv(spec: CipherSpec, iv: bytes | None,
               random_bytes: RandomBytes) -> tuple[bytes, bytes | None]:
    """The IV an Encrypt runs with, and the one to return to the client (when the server
    chose it): the client's, else a fresh one when the mode needs one."""
    if spec.random_iv and iv is not None:
        raise KmipError(ResultReason.INVALID_FIELD,
                        "Random IV is set: the server chooses the IV; send none")
    generated = None
    if iv is None and spec.needs_iv:
        length = spec.default_iv_length()
        if length < GCM_MIN_GENERATED_IV and (spec.mode == BlockCipherMode.GCM
                                              or spec.algorithm == _CHACHA20):
            # A random GCM IV or ChaCha20 nonce shorter than 96 bits repeats too soon (NIST
            # SP 800-38D §8.2.2); a client that needs a shorter one sends its own.
            kind = "GCM IV" if spec.mode == BlockCipherMode.GCM else "ChaCha20 nonce"
            raise unsupported(f"IV Length {length * 8}: a generated {kind} is at least "
                              f"{GCM_MIN_GENERATED_IV * 8} bits")
        check_iv_length(spec, length)  # (before anything is drawn: IV Length is the client's)
        iv = generated = random_bytes(length)
    iv = iv or b""
    check_iv(spec, iv)
    return iv, generated


def decrypt_iv(spec: CipherSpec, iv: bytes | None) -> bytes:
    """The IV a Decrypt runs with: the client's, required when the mode needs one."""
    if iv is None and spec.needs_iv:
        # The OASIS CS-BC-M-11..13 cases expect Invalid Message for a missing IV.
        raise KmipError(ResultReason.INVALID_MESSAGE,
                        "missing-iv: this mode needs the IV/Counter/Nonce")
    iv = iv or b""
    check_iv(spec, iv)
    return iv


def check_iv(spec: CipherSpec, iv: bytes) -> None:
    """Refuse (Invalid Field) an IV/Counter/Nonce of the wrong size for the mode."""
    check_iv_length(spec, len(iv))


def check_iv_length(spec: CipherSpec, length: int) -> None:
    """Refuse (Invalid Field) an IV/Counter/Nonce of ``length`` bytes, if the mode takes
    no IV of that size."""
    mode = spec.mode
    if mode in (BlockCipherMode.CBC, BlockCipherMode.CTR):
        size = 8 if spec.algorithm == _DES3 else 16
        ok, expected = length == size, f"{size} bytes"
    elif mode == BlockCipherMode.GCM:
        ok, expected = 8 <= length <= 128, "8 to 128 bytes"
    elif spec.algorithm == _CHACHA20:
        ok, expected = length in (8, 12, 16), "8, 12 or 16 bytes"
    elif spec.algorithm == _CHACHA20POLY1305:
        ok, expected = length == 12, "12 bytes"
    else:
        return
    if not ok:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"the IV/Counter/Nonce is {length} bytes; this mode takes {expected}")


# The ciphers --------------------------------------------------------------------
def _block_cipher(spec: CipherSpec, key: bytes, iv: bytes) -> Cipher:
    algorithm: CipherAlgorithm
    if spec.algorithm == _DES3:
        if len(key) not in (16, 24):  # (8 bytes would be single DES)
            raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                            f"a DES3 key is 16 or 24 bytes, not {len(key)}")
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
        if len(tag) != spec.tag_length:
            # Accepting any shorter prefix would let a forger pick a 4-byte tag.
            raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                            f"the tag is {len(tag)} bytes; the Tag Length is {spec.tag_length}")
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
        if not hmac.compare_digest(expected[:spec.tag_length], tag):
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

