"""L1 in a PKCS#11 token whose session is lost while kcm-core runs (an HSM restarted or
reset, a network HSM's connection dropped, the module finalized): the core opens a new
session and goes on; a token that stays unusable is answered like a store outage, never as
an internal error or a blob tampered with (:mod:`kcm.core.l1_pkcs11`)."""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import exceptions as p11
from twisted.logger import globalLogPublisher

from kcm.core import keys
from kcm.core.hierarchy import provision_service, provision_tenant
from kcm.core.keyring import Keyring
from kcm.core.l1_pkcs11 import Pkcs11L1, TokenUnavailable, open_token_key
from kcm.core.request_handler import CoreRequestHandler
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.kmip.messages import ResponseBatchItem
from kcm.testing.requests import create_managed, get, request, response
from tests.core_support import Caller, service_principal
from tests.softhsm import MODULE, SoftHsm

AAD = keys.object_aad("demo", "l2-uid")


@pytest.fixture
def logged() -> Iterator[list[dict]]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


@dataclass
class TokenCore:
    """A request handler over a SQLite store, with L1 in the SoftHSM2 token."""

    store: Store
    l1: Pkcs11L1
    softhsm: SoftHsm

    def handler(self) -> CoreRequestHandler:
        """A handler with a keyring of its own: a core just started, no L2 unwrapped yet
        (its first request uses the token)."""
        return CoreRequestHandler(self.store, Keyring(self.l1), clock=time.time)

    def ask(self, handler: CoreRequestHandler, item) -> ResponseBatchItem:
        caller = Caller(service_principal(), "127.0.0.1:40000")
        [answer] = response(handler.respond(request(item), caller, int(time.time()))
                            ).batch_items
        return answer

    def drop_sessions(self) -> None:
        """What an HSM reset or a dropped connection does: every session of the process is
        gone, and its login with them."""
        token = pkcs11.lib(MODULE).get_token(token_label=self.softhsm.token)
        assert ctypes.CDLL(MODULE).C_CloseAllSessions(ctypes.c_ulong(token.slot.slot_id)) == 0


@pytest.fixture
def token_core(tmp_path: Path, softhsm: SoftHsm) -> Iterator[TokenCore]:
    url = f"sqlite:///{tmp_path / 'kcm.db'}"
    upgrade(url)
    store = Store(url)
    store.startService()
    l1, _ = open_token_key(softhsm.uri(), create=True)
    boot = Keyring(l1)
    store.audit_key = boot.audit_key
    now = int(time.time())

    def bootstrap(session) -> None:
        provision_tenant(session, boot, "demo", now=now)
        provision_service(session, boot, "demo", "app", now=now)

    store.run_sync(bootstrap)
    try:
        yield TokenCore(store, l1, softhsm)
    finally:
        store.stopService()


def _failures(events: list[dict]) -> list[dict]:
    """The events logged with a traceback."""
    return [e for e in events if "log_failure" in e]


def test_a_lost_session_is_opened_again_and_requests_succeed(
        token_core: TokenCore, logged: list[dict]) -> None:
    token_core.drop_sessions()
    created = token_core.ask(token_core.handler(), create_managed())
    assert created.result_status == ResultStatus.SUCCESS, created.result_message
    uid = created.response_payload.unique_identifier

    token_core.drop_sessions()  # again, and a core that must unwrap the tenant key to Get
    got = token_core.ask(token_core.handler(), get(uid))
    assert got.result_status == ResultStatus.SUCCESS, got.result_message
    assert got.response_payload.unique_identifier == uid

    assert not _failures(logged)
    reopened = [e for e in logged if "token session was lost" in str(e.get("log_format"))]
    assert len(reopened) == 2 and reopened[0]["why"] == "SessionHandleInvalid"
    # A wrong tag in the new session is still a failed authentication, not a lost session.
    blob = token_core.l1.wrap(b"k" * 32, aad=AAD)
    with pytest.raises(keys.UnwrapError, match="failed authentication"):
        token_core.l1.unwrap(blob[:-1] + bytes([blob[-1] ^ 1]), aad=AAD)
    assert token_core.l1.unwrap(blob, aad=AAD) == b"k" * 32


def test_a_module_finalized_under_the_core_is_initialized_again(
        token_core: TokenCore) -> None:
    l1 = token_core.l1
    check, blob = l1.check_value(), l1.wrap(b"secret", aad=AAD)
    assert ctypes.CDLL(MODULE).C_Finalize(None) == 0  # CKR_CRYPTOKI_NOT_INITIALIZED next
    assert l1.check_value() == check
    assert ctypes.CDLL(MODULE).C_Finalize(None) == 0
    assert l1.unwrap(blob, aad=AAD) == b"secret"


def test_a_token_that_stays_gone_is_answered_unavailable_in_one_line(
        token_core: TokenCore, logged: list[dict], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The module restarts without the token (SOFTHSM2_CONF now names an empty token
    directory): a new session cannot be opened. Each request is answered General Failure
    "the key store is unavailable; try again", logged in one line without a traceback;
    once the token is back, the next request succeeds."""
    uid = token_core.ask(token_core.handler(), create_managed()).response_payload.unique_identifier
    handlers = [token_core.handler() for _ in range(3)]  # started cores, no L2 unwrapped
    softhsm_conf = token_core.softhsm.directory / "softhsm2.conf"
    empty = tmp_path / "no-tokens"
    (empty / "tokens").mkdir(parents=True)
    (empty / "softhsm2.conf").write_text(f"directories.tokendir = {empty / 'tokens'}\n"
                                         "objectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(empty / "softhsm2.conf"))
    assert ctypes.CDLL(MODULE).C_Finalize(None) == 0
    del logged[:]

    for handler, item in zip(handlers, (create_managed(), get(uid)), strict=False):
        answer = token_core.ask(handler, item)
        assert answer.result_status == ResultStatus.OPERATION_FAILED
        assert answer.result_reason == ResultReason.GENERAL_FAILURE
        assert answer.result_message.startswith("the key store is unavailable; try again")
    assert not _failures(logged)
    errors = [e for e in logged if e.get("log_level") is not None
              and e["log_level"].name in ("error", "critical")]
    assert len(errors) == 2
    # The first finds the module finalized; the second, the session the first left.
    for event, lost in zip(errors, ("CryptokiNotInitialized", "SessionHandleInvalid"),
                           strict=True):
        assert "the key store is unavailable" in event["log_format"]
        assert event["why"] == ("L1 key 'kcm-l1' in PKCS#11 token 'kcm-test' is unavailable "
                                f"({lost} while unwrapping; a new session: no PKCS#11 token "
                                f"'kcm-test' (module {MODULE}))")

    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm_conf))  # the HSM is back
    pkcs11.lib(MODULE).reinitialize()
    answer = token_core.ask(handlers[2], get(uid))
    assert answer.result_status == ResultStatus.SUCCESS, answer.result_message


# The branches of Pkcs11L1 against a scripted token (no SoftHSM2 needed).

class _Key:
    """A token key whose every operation answers the next of ``script`` (an exception is
    raised)."""

    def __init__(self, *script: object) -> None:
        self.script = list(script)

    def _next(self, *args: object, **kwargs: object) -> object:
        result = self.script.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result

    encrypt = decrypt = sign = _next


def _l1(key: _Key, *reopened: object) -> tuple[Pkcs11L1, list[int]]:
    """A Pkcs11L1 over ``key`` whose reopen answers the next of ``reopened`` (a key, or an
    exception to raise); the list counts the reopens."""
    calls: list[int] = []
    queue = list(reopened)

    def reopen() -> tuple[object, object]:
        calls.append(1)
        result = queue.pop(0)
        if isinstance(result, BaseException):
            raise result
        return object(), result

    return Pkcs11L1(object(), key, "L1 key 'k' in PKCS#11 token 't'", reopen), calls


def _blob() -> bytes:
    return bytes([keys.WRAP_VERSION]) + bytes(keys.NONCE_BYTES) + bytes(keys.TAG_BYTES + 4)


@pytest.mark.parametrize("lost", [
    p11.SessionHandleInvalid(), p11.SessionClosed(), p11.DeviceRemoved(), p11.DeviceError(),
    p11.TokenNotPresent(), p11.UserNotLoggedIn(), p11.KeyHandleInvalid(),
    p11.PKCS11Error("Initialisation error (not initialized). Should never see this."),
])
def test_a_lost_session_is_replaced_and_the_operation_tried_again(lost) -> None:
    l1, reopens = _l1(_Key(lost), _Key(b"plain"))
    assert l1.unwrap(_blob(), aad=AAD) == b"plain"
    assert len(reopens) == 1


def test_a_failed_authentication_is_not_a_lost_session() -> None:
    for refusal in (p11.GeneralError(), p11.EncryptedDataInvalid(), p11.FunctionFailed()):
        l1, reopens = _l1(_Key(refusal))
        with pytest.raises(keys.UnwrapError, match="failed authentication"):
            l1.unwrap(_blob(), aad=AAD)
        assert not reopens


def test_a_session_that_cannot_be_replaced_makes_l1_unavailable() -> None:
    l1, reopens = _l1(_Key(p11.DeviceRemoved()),
                      keys.L1Error("no PKCS#11 token 't' (module m.so)"))
    with pytest.raises(TokenUnavailable, match=r"is unavailable \(DeviceRemoved while "
                       r"unwrapping; a new session: no PKCS#11 token 't' \(module m.so\)\)"):
        l1.unwrap(_blob(), aad=AAD)
    # Each later use tries again (the token may be back).
    l1._key = _Key(p11.SessionHandleInvalid())
    l1._reopen = lambda: (object(), _Key(b"p" * 16))
    assert l1.check_value() == (b"p" * 8).hex()
    assert len(reopens) == 1


def test_a_new_session_that_fails_too_makes_l1_unavailable() -> None:
    l1, reopens = _l1(_Key(p11.SessionHandleInvalid()), _Key(p11.DeviceError()))
    with pytest.raises(TokenUnavailable, match=r"\(DeviceError while wrapping, in a new "
                       "session too\\)"):
        l1.wrap(b"x" * 32, aad=AAD)
    assert len(reopens) == 1
    without = Pkcs11L1(object(), _Key(p11.SessionClosed()), "L1 key 'k'")  # no reopen
    with pytest.raises(TokenUnavailable, match="SessionClosed while unwrapping"):
        without.unwrap(_blob(), aad=AAD)


def test_cmac_errors_are_l1_errors() -> None:
    l1, reopens = _l1(_Key(p11.MechanismInvalid()))
    with pytest.raises(keys.L1Error, match="failed to compute AES-CMAC: MechanismInvalid"):
        l1.check_value()
    l1, reopens = _l1(_Key(p11.SessionHandleInvalid()), _Key(b"a" * 16, b"b" * 16))
    assert l1.audit_key() == b"a" * 16 + b"b" * 16
    assert len(reopens) == 1


# Found again, it must be the same key; a refused PIN is not tried again -----------------
def test_a_session_reopened_on_another_key_of_the_same_labels_is_refused(
        token_core: TokenCore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fail-over to a token of the same labels and another key (a standby never cloned):
    the reopened session took it for L1, and the sweeper wrapped new tenant keys under it,
    lost once the real token was back. Now that L1 is unavailable until it is back."""
    import shutil
    import subprocess

    from tests.softhsm import SO_PIN

    l1, softhsm = token_core.l1, token_core.softhsm
    check, blob = l1.check_value(), l1.wrap(b"k" * 32, aad=AAD)
    standby = tmp_path / "standby"
    (standby / "tokens").mkdir(parents=True)
    (standby / "softhsm2.conf").write_text(f"directories.tokendir = {standby / 'tokens'}\n"
                                           "objectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(standby / "softhsm2.conf"))
    subprocess.run([shutil.which("softhsm2-util"), "--init-token", "--free", "--label",
                    softhsm.token, "--pin", softhsm.pin, "--so-pin", SO_PIN], check=True,
                   capture_output=True, timeout=60)
    assert ctypes.CDLL(MODULE).C_Finalize(None) == 0
    other, created = open_token_key(softhsm.uri(), create=True)
    assert created and other.check_value() != check
    other.close()
    assert ctypes.CDLL(MODULE).C_Finalize(None) == 0  # the core's session is gone
    with pytest.raises(TokenUnavailable, match="is not the one this process opened"):
        l1.wrap(b"new tenant key", aad=AAD)
    # The real token back: the same L1 again.
    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm.directory / "softhsm2.conf"))
    assert ctypes.CDLL(MODULE).C_Finalize(None) == 0
    assert l1.unwrap(blob, aad=AAD) == b"k" * 32 and l1.check_value() == check


def test_a_changed_pin_is_read_again_and_a_refused_one_is_not_tried_again(
        softhsm: SoftHsm, tmp_path: Path) -> None:
    """The operator changes the user PIN with the token's tools, then the pin-source file
    (docs/operations.md). A lost session was logged in again with the PIN read at start:
    refused at every request, each spending one of the token's login tries."""
    pin_file = tmp_path / "l1.pin"
    pin_file.write_text(softhsm.pin + "\n")
    pin_file.chmod(0o600)
    l1, _ = open_token_key(softhsm.uri(pin_file=pin_file), create=True)
    blob = l1.wrap(b"x" * 32, aad=AAD)
    token = pkcs11.lib(MODULE).get_token(token_label=softhsm.token)
    with token.open(rw=True) as session:  # (the process is logged in: it shares the login)
        session.set_pin(softhsm.pin, "new-pin-9876")
    pin_file.write_text("new-pin-9876\n")
    TokenCore(None, l1, softhsm).drop_sessions()  # type: ignore[arg-type]
    assert l1.unwrap(blob, aad=AAD) == b"x" * 32  # logged in with the PIN the file has now
    # A PIN the token refuses is tried once, then not again until the file changes.
    pin_file.write_text("wrong-pin\n")
    TokenCore(None, l1, softhsm).drop_sessions()  # type: ignore[arg-type]
    messages = []
    for _ in range(3):
        with pytest.raises(TokenUnavailable) as unavailable:
            l1.unwrap(blob, aad=AAD)
        messages.append(str(unavailable.value))
    assert "refused the PIN" in messages[0]
    assert all("refused this PIN before" in message for message in messages[1:])
    flags = pkcs11.lib(MODULE).get_token(token_label=softhsm.token).flags
    assert not flags & 0x20000  # CKF_USER_PIN_FINAL_TRY: one refusal, not three
    pin_file.write_text("new-pin-9876\n")
    assert l1.unwrap(blob, aad=AAD) == b"x" * 32


def test_an_existing_key_that_is_not_private_is_not_taken_for_l1(softhsm: SoftHsm) -> None:
    """CKA_PRIVATE false: usable in a session that never logged in, without the PIN."""
    from pkcs11 import Attribute, KeyType

    token = pkcs11.lib(MODULE).get_token(token_label=softhsm.token)
    with token.open(rw=True, user_pin=softhsm.pin) as session:
        session.generate_key(KeyType.AES, 256, label="kcm-l1", store=True, template={
            Attribute.PRIVATE: False, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
            Attribute.ENCRYPT: True, Attribute.DECRYPT: True, Attribute.SIGN: True})
    with pytest.raises(keys.L1Error, match="must be a private token object"):
        open_token_key(softhsm.uri(), create=True)
