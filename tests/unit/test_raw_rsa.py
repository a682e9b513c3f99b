"""A Sign of Digested Data that names no hash is computed by the system's OpenSSL, with the
interpreter's lock released (kcm.crypto.raw_rsa), and gives the signature the Python
exponentiation gives (the scheme is deterministic)."""

from __future__ import annotations

import os
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kcm.crypto import raw_rsa, signatures


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 4096)


def test_the_system_openssl_is_loaded() -> None:
    # Python's own ssl module links it: on the machines KCM supports it is there.
    assert raw_rsa.sign_encoded is not None


def test_openssl_and_python_sign_alike(key: rsa.RSAPrivateKey,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for encoded in (b"\x07" * 32, b"", b"x" * (4096 // 8 - 11), os.urandom(16)):
        by_openssl = signatures._sign_encoded(key, encoded, os.urandom)
        assert key.public_key().recover_data_from_signature(
            by_openssl, padding.PKCS1v15(), None) == encoded
        with monkeypatch.context() as patched:
            patched.setattr(raw_rsa, "sign_encoded", None)
            assert signatures._sign_encoded(key, encoded, os.urandom) == by_openssl


def test_a_refusal_is_none_and_leaves_no_error_behind(key: rsa.RSAPrivateKey) -> None:
    assert raw_rsa.sign_encoded(key, b"x" * (4096 // 8)) is None  # too long for the key
    assert raw_rsa.sign_encoded(key, b"fits") is not None


def _count_while(sign) -> float:
    """How fast another thread counts while ``sign`` makes 6 signatures (per second)."""
    counted, done = [0], threading.Event()

    def count() -> None:
        while not done.is_set():
            counted[0] += 1

    counter = threading.Thread(target=count)
    counter.start()
    started = time.perf_counter()
    for n in range(6):
        sign(bytes([n]) * 32)
    took = time.perf_counter() - started
    done.set()
    counter.join()
    return counted[0] / took


@pytest.mark.serial  # asserts how fast another thread runs: alone, after the parallel part
def test_the_lock_is_released_while_openssl_signs(key: rsa.RSAPrivateKey,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread counts about 5x as fast while OpenSSL signs as while Python's
    exponentiation does (which holds the interpreter's lock 25 ms at a time)."""
    free = _count_while(lambda encoded: raw_rsa.sign_encoded(key, encoded))
    monkeypatch.setattr(raw_rsa, "sign_encoded", None)
    held = _count_while(lambda encoded: signatures._sign_encoded(key, encoded, os.urandom))
    assert free > 2.5 * held, (free, held)
