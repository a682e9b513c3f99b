"""L1 kept in a key file (:func:`kcm.core.keys.load_l1`) or given in an environment variable
(the design's "env secret"): the key is in process memory, and wrapping, the check value and
the audit key are computed here (:mod:`kcm.core.keys`)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from kcm.core import keys

__all__ = ["FileL1", "open_key_env", "open_key_file"]


class FileL1:
    """An L1 whose 32 bytes this process holds."""

    def __init__(self, key: bytes, description: str = "L1 key") -> None:
        if len(key) != keys.KEY_BYTES:
            raise ValueError(f"L1 must be {keys.KEY_BYTES} bytes")
        self._key = key
        self.description = description

    def check_value(self) -> str:
        return keys.key_check_value(self._key)

    def audit_key(self) -> bytes:
        return keys.derive_audit_key(self._key)

    def wrap(self, plaintext: bytes, *, aad: bytes,
             random_bytes: keys.RandomBytes = os.urandom,
             version: int = keys.WRAP_VERSION) -> bytes:
        return keys.wrap(self._key, plaintext, aad=aad, random_bytes=random_bytes,
                         version=version)

    def unwrap(self, blob: bytes, *, aad: bytes) -> bytes:
        return keys.unwrap(self._key, blob, aad=aad)


def open_key_file(path: str, *, create: bool = False) -> tuple[FileL1, bool]:
    """The L1 in the key file at ``path`` (:class:`kcm.core.keys.KeyFileError` if it cannot
    be read); with ``create``, a new key file is written first if there is none."""
    created = False
    if create and not os.path.exists(path):
        keys.create_l1_keyfile(path)
        created = True
    return FileL1(keys.load_l1(path), f"L1 key file {path}"), created


def open_key_env(name: str, *, create: bool = False,
                 environ: Mapping[str, str] | None = None) -> tuple[FileL1, bool]:
    """The L1 in the environment variable ``name`` (its base64 text, as in a key file).
    Never created here, ``create`` or not: a key kept in the environment comes from the
    secret store that sets it (``kcm core new-l1-key`` prints a new one)."""
    text = (os.environ if environ is None else environ).get(name)
    if text is None or not text.strip():
        verb = ("set it to a new key (`kcm core new-l1-key` prints one) and run `kcm core "
                "init` again" if create else "set it to the deployment's L1 key")
        raise keys.L1Error(f"the environment variable {name} (core.l1_key_env) is not set: "
                           f"{verb}")
    try:
        key = keys.parse_l1(text)
    except keys.KeyFileError as e:
        raise keys.L1Error(f"the environment variable {name} (core.l1_key_env): {e}") from None
    return FileL1(key, f"L1 key in the environment variable {name}"), False
