"""TLS private key files are checked like the L1 key file: a key others may read is refused
when it is loaded (a listener's or the link's start fails naming it), and one its group may
read is warned about, once per file."""

from __future__ import annotations

import os

import pytest
from twisted.logger import globalLogPublisher

from kcm import tls
from kcm.pki import init_pki
from kcm.tls import client_tls_options, server_tls_options


@pytest.fixture
def pki(tmp_path):
    return init_pki(tmp_path / "pki")


@pytest.fixture
def warnings():
    seen: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "kcm.tls":
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_a_key_file_others_may_read_is_refused(pki) -> None:
    os.chmod(pki.core.key, 0o644)
    with pytest.raises(ValueError, match=r"TLS key file .*core\.key has mode 0644; it must "
                                         r"not be readable by others \(chmod 600\)"):
        server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert)
    os.chmod(pki.gateway.key, 0o604)
    with pytest.raises(ValueError, match="gateway.key has mode 0604"):
        client_tls_options(pki.gateway.cert, pki.gateway.key, pki.ca.cert, "localhost")


def test_a_key_file_its_group_may_read_is_warned_about_once(pki, warnings) -> None:
    os.chmod(pki.core.key, 0o640)
    server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert)
    server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert)  # the core's second listener
    assert [(event["path"], event["mode"]) for event in warnings] == [
        (str(pki.core.key), "0640")]


def test_a_key_file_of_its_owner_alone_is_taken_silently(pki, warnings) -> None:
    assert oct(os.stat(pki.core.key).st_mode & 0o777) == "0o600"  # as the dev PKI writes it
    server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert)
    os.chmod(pki.core.key, 0o400)
    server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert)
    assert warnings == []


def test_the_mode_check_itself() -> None:
    tls.check_key_file_mode("/x/600.key", 0o100600)
    with pytest.raises(ValueError):
        tls.check_key_file_mode("/x/004.key", 0o100004)
