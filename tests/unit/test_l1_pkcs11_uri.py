"""The RFC 7512 URI that names L1 in a PKCS#11 token (``l1_pkcs11``): what is read from it,
and what is refused (no token needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcm.core.keys import L1Error
from kcm.core.l1_pkcs11 import Pkcs11Uri

MODULE = "module-path=/usr/lib/softhsm/libsofthsm2.so"


def test_token_object_module_and_pin_value_percent_decoded() -> None:
    uri = Pkcs11Uri.parse(f"pkcs11:token=my%20hsm;object=kcm-l1;type=secret-key"
                          f"?{MODULE}&pin-value=12%2634")
    assert uri == Pkcs11Uri("my hsm", "kcm-l1", "/usr/lib/softhsm/libsofthsm2.so", "12&34")
    assert "12&34" not in repr(uri)  # the PIN never shows


def test_pin_source_is_the_first_line_of_a_file(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("s3cret\nignored\n")
    pin_file.chmod(0o600)
    for source in (f"file:{pin_file}", str(pin_file)):
        uri = Pkcs11Uri.parse(f"pkcs11:token=t;object=o?{MODULE}&pin-source={source}")
        assert uri.pin == "s3cret"


def test_an_unreadable_pin_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(L1Error, match="cannot read the L1 token PIN from .*missing"):
        Pkcs11Uri.parse(f"pkcs11:token=t;object=o?{MODULE}&pin-source={tmp_path / 'missing'}")


def test_a_pin_file_others_may_read_is_refused(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("s3cret\n")
    pin_file.chmod(0o640)
    with pytest.raises(L1Error, match="mode 0640; it must not be accessible .* \\(chmod 600\\)"):
        Pkcs11Uri.parse(f"pkcs11:token=t;object=o?{MODULE}&pin-source=file:{pin_file}")


@pytest.mark.parametrize(("uri", "message"), [
    ("file:/etc/l1.key", "must be a PKCS#11 URI"),
    (f"pkcs11:object=o?{MODULE}&pin-value=1", "must give token="),
    (f"pkcs11:token=t?{MODULE}&pin-value=1", "must give object="),
    ("pkcs11:token=t;object=o?pin-value=1", "must give module-path="),
    (f"pkcs11:token=t;object=o?{MODULE}", "must give the user PIN"),
    (f"pkcs11:token=t;object=o?{MODULE}&pin-value=1&pin-source=/p", "both pin-value and"),
    (f"pkcs11:token=t;object=o;type=private?{MODULE}&pin-value=1", "type=secret-key"),
    (f"pkcs11:token=t;object=o;id=%01?{MODULE}&pin-value=1", "unsupported attribute 'id'"),
    (f"pkcs11:token=t;object=o?{MODULE}&module-name=softhsm2&pin-value=1",
     "unsupported attribute 'module-name'"),
    (f"pkcs11:token=t;token=u;object=o?{MODULE}&pin-value=1", "gives token twice"),
])
def test_incomplete_or_unknown_uris_are_refused(uri: str, message: str) -> None:
    with pytest.raises(L1Error, match=message):
        Pkcs11Uri.parse(uri)


@pytest.mark.parametrize("uri", [
    f"pkcs11:token=t;object=o?{MODULE}&pin-value=Zq7&Secret-PIN-4711",  # an unencoded "&"
    f"pkcs11:token=t;object=o?{MODULE}&pin-value:Zq7&Secret",  # a typo
    f"pkcs11:token=t;object=o?{MODULE}&Zq7Secret=1&pin-value=1",
])
def test_a_refused_uri_never_repeats_what_may_be_the_pin(uri: str) -> None:
    with pytest.raises(L1Error) as refused:
        Pkcs11Uri.parse(uri)
    message = str(refused.value)
    assert "Zq7" not in message and "Secret" not in message
    assert "not a supported name=value" in message and "percent-encode" in message
