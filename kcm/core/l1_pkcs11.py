"""L1 kept in a PKCS#11 token (an HSM; SoftHSM2 in the tests), named by an RFC 7512 URI.

L1 is a token object: an AES-256 secret key, sensitive and not extractable, which never
leaves the token. This process asks the token to

* wrap and unwrap (C_Encrypt/C_Decrypt, CKM_AES_GCM): the blobs have the format of
  :mod:`kcm.core.keys` (version 2, random 12-byte nonce chosen here, AAD = version byte +
  the object's AAD); the unwrapped L2s then live in process memory, as with a key file;
* compute the check value: AES-CMAC (CKM_AES_CMAC, C_Sign) of ``kcm key check value v1``,
  truncated to 8 bytes;
* derive the audit key: NIST SP 800-108 counter-mode KDF with AES-CMAC as the PRF, label
  ``kcm audit chain key v1``, 256 bits (two CMAC blocks); the derived key leaves the token,
  like the L2s, and MACs the audit chain in process memory.

The URI (``l1_pkcs11`` in the configuration)::

    pkcs11:token=kcm;object=kcm-l1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/kcm/l1.pin

Path attributes: ``token`` (the token label) and ``object`` (the key's label) are required;
``type=secret-key`` is allowed. Query attributes: ``module-path`` (required), and the user
PIN as ``pin-source`` (a ``file:`` URI or a path; the file's first line) or ``pin-value``.
Values are percent-decoded. Anything else is refused rather than ignored.

A lost session (the HSM restarted or reset, a network HSM's connection dropped, the module
finalized under us: CKR_SESSION_HANDLE_INVALID, CKR_DEVICE_ERROR, CKR_USER_NOT_LOGGED_IN...)
is not a failed authentication: the operation opens a new session, logs in, finds the key
again and is tried once more; if the token still cannot be used it raises
:class:`TokenUnavailable`, which a request answers like a store outage. A wrong tag or
wrong data stays :class:`kcm.core.keys.UnwrapError`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlparse

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams
from twisted.logger import Logger

from kcm.core import keys

__all__ = ["Pkcs11L1", "Pkcs11Uri", "TokenUnavailable", "open_token_key"]

log = Logger()
_T = TypeVar("_T")

#: The message whose AES-CMAC (truncated) is the check value.
CHECK_VALUE_LABEL = b"kcm key check value v1"
_PATH_ATTRIBUTES = {"token", "object", "type"}
_QUERY_ATTRIBUTES = {"module-path", "pin-source", "pin-value"}
#: What a token answers when the session, the login or the token itself is gone (an HSM
#: restarted or reset, a network HSM's connection dropped, a token removed), as opposed to
#: a refusal of the data or the key: a new session is worth one more try.
_SESSION_LOST = (p11.SessionHandleInvalid, p11.SessionClosed, p11.DeviceRemoved,
                 p11.DeviceError, p11.DeviceMemory, p11.TokenNotPresent,
                 p11.TokenNotRecognised, p11.SlotIDInvalid, p11.UserNotLoggedIn,
                 p11.KeyHandleInvalid, p11.ObjectHandleInvalid)


class TokenUnavailable(keys.L1Error):
    """The token cannot be used now: its session was lost and a new one could not be opened,
    or fails the same way. The operator's to fix, like a store outage (the request is
    answered so, :mod:`kcm.core.store.unavailable`); never a sign of tampering."""


def _session_lost(error: p11.PKCS11Error) -> bool:
    return isinstance(error, _SESSION_LOST) or _not_initialized(error)


def _not_initialized(error: p11.PKCS11Error) -> bool:
    # CKR_CRYPTOKI_NOT_INITIALIZED (the module finalized under us) has no class of its own
    # in python-pkcs11: a plain PKCS11Error that says so.
    return type(error) is p11.PKCS11Error and "not initialized" in str(error)


@dataclass(frozen=True)
class Pkcs11Uri:
    """The parts of an RFC 7512 URI that locate L1."""

    token: str
    object: str
    module_path: str
    pin: str

    @classmethod
    def parse(cls, uri: str) -> Pkcs11Uri:
        """Parse ``uri``; :class:`kcm.core.keys.L1Error` says what is wrong (never the PIN)."""
        scheme, sep, rest = uri.partition(":")
        if not sep or scheme.lower() != "pkcs11":
            raise keys.L1Error("l1_pkcs11 must be a PKCS#11 URI (pkcs11:token=...;object=...)")
        path, _, query = rest.partition("?")
        found_path = _attributes(path, ";", _PATH_ATTRIBUTES)
        found_query = _attributes(query, "&", _QUERY_ATTRIBUTES)
        if found_path.get("type", "secret-key") != "secret-key":
            raise keys.L1Error("the L1 PKCS#11 URI must name a secret key (type=secret-key)")
        for name, where in (("token", found_path), ("object", found_path),
                            ("module-path", found_query)):
            if not where.get(name):
                raise keys.L1Error(f"the L1 PKCS#11 URI must give {name}=")
        if "pin-value" in found_query and "pin-source" in found_query:
            raise keys.L1Error("the L1 PKCS#11 URI gives both pin-value and pin-source")
        if "pin-value" in found_query:
            pin = found_query["pin-value"]
        elif "pin-source" in found_query:
            pin = _read_pin(found_query["pin-source"])
        else:
            raise keys.L1Error("the L1 PKCS#11 URI must give the user PIN "
                               "(pin-source=file:... or pin-value=...)")
        return cls(found_path["token"], found_path["object"], found_query["module-path"], pin)

    def __repr__(self) -> str:  # never show the PIN
        return f"Pkcs11Uri(token={self.token!r}, object={self.object!r}, " \
               f"module_path={self.module_path!r})"


#: The attribute names of RFC 7512 PKCS#11 URIs (path and query): the only text of a
#: refused URI an error message repeats.
_KNOWN_ATTRIBUTES = frozenset({
    "token", "manufacturer", "serial", "model", "library-manufacturer",
    "library-description", "library-version", "slot-description", "slot-manufacturer",
    "slot-id", "object", "type", "id", "pin-source", "pin-value", "module-name",
    "module-path"})


def _attributes(text: str, separator: str, allowed: set[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for number, part in enumerate(filter(None, text.split(separator)), 1):
        name, sep, value = part.partition("=")
        if not sep or name not in allowed:
            # Named only when it is a known attribute's name: anything else may be a
            # piece of the PIN (a pin-value with an unencoded "&"), never echoed.
            what = (f"attribute {name!r}" if sep and name in _KNOWN_ATTRIBUTES
                    else f"item {number}, not a supported name=value,")
            raise keys.L1Error(f"the L1 PKCS#11 URI has an unsupported {what} "
                               f"(supported: {', '.join(sorted(allowed))}; percent-encode "
                               f"&, ; and % in a value)")
        if name in found:
            raise keys.L1Error(f"the L1 PKCS#11 URI gives {name} twice")
        found[name] = unquote(value)
    return found


def _read_pin(source: str) -> str:
    """The first line of the PIN file; like the L1 key file, it must be its owner's alone."""
    path = unquote(urlparse(source).path) if source.startswith("file:") else source
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise keys.L1Error(f"cannot read the L1 token PIN from {path}: {e.strerror}") from e
    with os.fdopen(fd, encoding="utf-8") as f:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            raise keys.L1Error(f"the L1 token PIN file {path} has mode {mode:04o}; it must not "
                               "be accessible by group or others (chmod 600)")
        return f.readline().rstrip("\r\n")


class Pkcs11L1:
    """An L1 in a PKCS#11 token, used through one logged-in session.

    PKCS#11 allows one operation at a time per session, and the keyring is used from the
    database threads: every token call holds a lock (they are rare, L2s are cached).
    ``reopen`` opens a new logged-in session and finds the key in it, for when this one is
    lost (None: a lost session makes L1 unavailable at once).
    """

    def __init__(self, session: pkcs11.Session, key: pkcs11.SecretKey, description: str,
                 reopen: Callable[[], tuple[pkcs11.Session, pkcs11.SecretKey]] | None = None
                 ) -> None:
        self._session = session
        self._key = key
        self._lock = threading.Lock()
        self._reopen = reopen
        self.description = description

    def _in_token(self, what: str, operation: Callable[[pkcs11.SecretKey], _T]) -> _T:
        """``operation`` on the key, holding the lock. If the session is lost
        (:func:`_session_lost`), a new one is opened (logged in, the key found again) and
        ``operation`` tried once more; :class:`TokenUnavailable` if that cannot be done or
        fails the same way. Any other PKCS11Error is the caller's to name."""
        with self._lock:
            try:
                return operation(self._key)
            except p11.PKCS11Error as e:
                if not _session_lost(e):
                    raise
                lost = e
            if self._reopen is None:
                raise TokenUnavailable(f"{self.description} is unavailable ({_name(lost)} "
                                       f"while {what})") from lost
            try:
                # The old session is left as it is: gone with the token's state, and its
                # handle may already be another session's.
                self._session, self._key = self._reopen()
            except (keys.L1Error, p11.PKCS11Error) as e:
                raise TokenUnavailable(
                    f"{self.description} is unavailable ({_name(lost)} while {what}; a new "
                    f"session: {_name(e)})") from e
            log.warn("{l1}: the token session was lost ({why} while {what}); a new one is "
                     "logged in", l1=self.description, why=_name(lost), what=what)
            try:
                return operation(self._key)
            except p11.PKCS11Error as e:
                if not _session_lost(e):
                    raise
                raise TokenUnavailable(f"{self.description} is unavailable ({_name(e)} while "
                                       f"{what}, in a new session too)") from e

    def _cmac(self, message: bytes) -> bytes:
        try:
            return self._in_token("computing AES-CMAC", lambda key: bytes(
                key.sign(message, mechanism=Mechanism.AES_CMAC)))
        except p11.PKCS11Error as e:
            raise keys.L1Error(f"{self.description} failed to compute AES-CMAC: "
                               f"{_name(e)}") from e

    def check_value(self) -> str:
        return self._cmac(CHECK_VALUE_LABEL)[:8].hex()

    def audit_key(self) -> bytes:
        # SP 800-108 counter mode: [i]_32 || Label || 0x00 || Context (none) || [L]_32.
        length = (keys.KEY_BYTES * 8).to_bytes(4, "big")
        blocks = [self._cmac(i.to_bytes(4, "big") + keys.AUDIT_KEY_LABEL + b"\x00" + length)
                  for i in (1, 2)]
        return b"".join(blocks)[:keys.KEY_BYTES]

    def wrap(self, plaintext: bytes, *, aad: bytes,
             random_bytes: keys.RandomBytes = os.urandom,
             version: int = keys.WRAP_VERSION) -> bytes:
        nonce = random_bytes(keys.NONCE_BYTES)
        if len(nonce) != keys.NONCE_BYTES:
            raise ValueError("random source returned the wrong number of bytes")
        if version not in keys.WRAP_VERSIONS:
            raise ValueError(f"unknown wrapped blob version {version}")
        header = bytes([version])
        params = GCMParams(nonce, header + aad, keys.TAG_BYTES * 8)
        try:
            # (A retry in a new session seals the same plaintext under the same nonce and
            # AAD: the same blob, nothing more revealed.)
            sealed = self._in_token("wrapping", lambda key: bytes(key.encrypt(
                plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params)))
        except p11.PKCS11Error as e:
            raise keys.L1Error(f"{self.description} failed to wrap: {_name(e)}") from e
        return header + nonce + sealed

    def unwrap(self, blob: bytes, *, aad: bytes) -> bytes:
        if len(blob) < 1 + keys.NONCE_BYTES + keys.TAG_BYTES:
            raise keys.UnwrapError("wrapped blob is too short")
        if blob[0] not in keys.WRAP_VERSIONS:
            raise keys.UnwrapError(f"unknown wrapped blob version {blob[0]}")
        nonce = blob[1:1 + keys.NONCE_BYTES]
        params = GCMParams(nonce, blob[:1] + aad, keys.TAG_BYTES * 8)
        try:
            return self._in_token("unwrapping", lambda key: bytes(key.decrypt(
                blob[1 + keys.NONCE_BYTES:], mechanism=Mechanism.AES_GCM,
                mechanism_param=params)))
        except p11.PKCS11Error as e:
            # Tokens report a wrong tag variously (SoftHSM2: CKR_GENERAL_ERROR); a lost
            # session is not one of them (TokenUnavailable, raised by _in_token).
            raise keys.UnwrapError(
                f"wrapped blob failed authentication in the token ({_name(e)}: wrong key or "
                "object, or tampered with)") from e

    def close(self) -> None:
        """Log out and close the session."""
        with self._lock:
            self._session.close()


def _name(error: Exception) -> str:
    if isinstance(error, p11.PKCS11Error) and _not_initialized(error):
        return "CryptokiNotInitialized"
    return str(error) or type(error).__name__


def open_token_key(uri: str, *, create: bool = False) -> tuple[Pkcs11L1, bool]:
    """The L1 the PKCS#11 ``uri`` names, in a logged-in session; with ``create``, a new
    token key is generated first if the token has none with that label. Raises
    :class:`kcm.core.keys.L1Error` saying what is wrong."""
    where = Pkcs11Uri.parse(uri)
    session, key, created = _open(where, create)
    token_name = f"PKCS#11 token {where.token!r}"
    try:
        opened = _check_value_of(key)
    except p11.PKCS11Error as e:
        session.close()
        raise keys.L1Error(f"the key {where.object!r} in {token_name} cannot compute "
                           f"AES-CMAC: {_name(e)}") from e
    refused_pin: list[str] = []

    def reopen() -> tuple[pkcs11.Session, pkcs11.SecretKey]:
        # The PIN as its source says now (an operator who changed it updates the file,
        # docs/operations.md): a PIN the token refused is not tried again until it changes,
        # so requests do not spend the token's login tries one each.
        current = Pkcs11Uri.parse(uri)
        if refused_pin and current.pin == refused_pin[0]:
            raise keys.L1Error(f"{token_name} refused this PIN before; waiting for a new one "
                               "in the PIN source")
        try:
            session, key, _ = _open(current, False)
        except keys.L1Error as e:
            if isinstance(e.__cause__, p11.PinIncorrect | p11.PinLocked):
                refused_pin[:] = [current.pin]
            raise
        refused_pin.clear()
        # The key found by its label must be the one this process opened: another token
        # with the same labels (a fail-over to the wrong one, a re-initialized token) would
        # have new tenant keys wrapped under a key that is not the database's.
        found = _check_value_of(key)
        if found != opened:
            session.close()
            raise keys.L1Error(f"the key {where.object!r} in {token_name} is not the one this "
                               f"process opened (check value {found}, not {opened})")
        return session, key

    return (Pkcs11L1(session, key, f"L1 key {where.object!r} in {token_name}", reopen),
            created)


def _check_value_of(key: pkcs11.SecretKey) -> str:
    """The check value of a token key (as :meth:`Pkcs11L1.check_value` says it)."""
    return bytes(key.sign(CHECK_VALUE_LABEL, mechanism=Mechanism.AES_CMAC))[:8].hex()


def _open(where: Pkcs11Uri, create: bool) -> tuple[pkcs11.Session, pkcs11.SecretKey, bool]:
    """A logged-in session of the token ``where`` names, the key in it, and whether it was
    created; :class:`kcm.core.keys.L1Error` saying what is wrong."""
    token_name = f"PKCS#11 token {where.token!r}"
    try:
        lib = pkcs11.lib(where.module_path)
    except p11.PKCS11Error as e:
        raise keys.L1Error(f"cannot load the PKCS#11 module {where.module_path}: {e}") from e
    try:
        token = _get_token(lib, where.token)
    except p11.NoSuchToken as e:
        raise keys.L1Error(f"no {token_name} (module {where.module_path})") from e
    except p11.MultipleTokensReturned as e:
        raise keys.L1Error(f"more than one {token_name}") from e
    except p11.PKCS11Error as e:
        raise keys.L1Error(f"cannot reach {token_name}: {_name(e)}") from e
    try:
        try:
            session = token.open(user_pin=where.pin, rw=create)
        except p11.UserAlreadyLoggedIn:
            # The login is the whole process's: another session of it has logged in (a test,
            # or a tool that opens L1 twice). This one shares it, and must not log out.
            session = token.open(rw=create)
    except p11.PinIncorrect as e:
        raise keys.L1Error(f"{token_name} refused the PIN (incorrect)") from e
    except p11.PinLocked as e:
        raise keys.L1Error(f"{token_name}: the user PIN is locked") from e
    except p11.PKCS11Error as e:
        raise keys.L1Error(f"cannot log in to {token_name}: {_name(e)}") from e
    try:
        key, created = _find_or_create(session, where, token_name, create)
    except BaseException:
        session.close()
        raise
    return session, key, created


def _get_token(lib: pkcs11.lib, label: str) -> pkcs11.Token:
    """The token labelled ``label``; a module finalized under us (its own restart, a
    C_Finalize elsewhere in the process) is initialized again first."""
    try:
        return lib.get_token(token_label=label)
    except p11.PKCS11Error as e:
        if not _not_initialized(e):
            raise
    with contextlib.suppress(p11.PKCS11Error):  # CKR_CRYPTOKI_NOT_INITIALIZED, as expected
        lib.finalize()  # (python-pkcs11 believes it initialized: it must be told)
    lib.initialize()
    return lib.get_token(token_label=label)


def _find_or_create(session: pkcs11.Session, where: Pkcs11Uri, token_name: str,
                    create: bool) -> tuple[pkcs11.SecretKey, bool]:
    found = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                      Attribute.LABEL: where.object}))
    if len(found) > 1:
        raise keys.L1Error(f"{token_name} holds {len(found)} keys labelled {where.object!r}")
    if not found:
        if not create:
            raise keys.L1Error(f"{token_name} has no key labelled {where.object!r}; "
                               "`kcm core init` creates it")
        key = session.generate_key(KeyType.AES, keys.KEY_BYTES * 8, label=where.object,
                                   store=True, template={
                                       Attribute.PRIVATE: True,
                                       Attribute.SENSITIVE: True,
                                       Attribute.EXTRACTABLE: False,
                                       Attribute.ENCRYPT: True,
                                       Attribute.DECRYPT: True,
                                       Attribute.SIGN: True,
                                       Attribute.VERIFY: True,
                                       Attribute.WRAP: False,
                                       Attribute.UNWRAP: False,
                                       Attribute.DERIVE: False,
                                   })
        return key, True
    key = found[0]
    problems = []
    if key[Attribute.KEY_TYPE] != KeyType.AES or key[Attribute.VALUE_LEN] != keys.KEY_BYTES:
        problems.append("is not an AES-256 key")
    if not key[Attribute.SENSITIVE] or key[Attribute.EXTRACTABLE]:
        problems.append("must be sensitive and not extractable")
    if not key[Attribute.PRIVATE] or not key[Attribute.TOKEN]:
        # (CKA_PRIVATE false: usable in a session that never logged in, without the PIN)
        problems.append("must be a private token object")
    if not (key[Attribute.ENCRYPT] and key[Attribute.DECRYPT] and key[Attribute.SIGN]):
        problems.append("must allow encrypt, decrypt and sign")
    if problems:
        raise keys.L1Error(f"the key {where.object!r} in {token_name} " + "; ".join(problems))
    return key, False
