"""Where an AEAD tag travels in a protocol version (AES-GCM, ChaCha20-Poly1305).

KMIP 1.4 added the Authenticated Encryption Tag field to Encrypt and Decrypt (KMIP 1.4
§4.29, §4.30); KMIP 1.2 and 1.3 define AEAD modes (GCM) and a Tag Length but no field for
the tag itself. Rather than refuse every AEAD request at 1.2 and 1.3 (an L4's default
cipher is AES-GCM), the tag travels where those versions can carry it: at the end of Data,
the way RFC 5116 lays an AEAD ciphertext out. An Encrypt answers ciphertext || tag, a
Decrypt takes the last Tag Length bytes of Data as the tag. From 1.4 on the tag has its own
field, as the spec says. Both planes call this (kcm-core's Encrypt/Decrypt, the L4 engine).
"""

from __future__ import annotations

from kcm.kmip.versions import Version

__all__ = ["TAG_FIELD_VERSION", "answer_data", "request_data"]

#: The first version with an Authenticated Encryption Tag field.
TAG_FIELD_VERSION: Version = (1, 4)


def answer_data(version: Version, ciphertext: bytes, tag: bytes | None
                ) -> tuple[bytes, bytes | None]:
    """(Data, Authenticated Encryption Tag) of an Encrypt answer in ``version``."""
    if tag is None or version >= TAG_FIELD_VERSION:
        return ciphertext, tag
    return ciphertext + tag, None


def request_data(version: Version, data: bytes, tag: bytes | None, tag_length: int
                 ) -> tuple[bytes, bytes | None]:
    """(ciphertext, tag) of an AEAD Decrypt request in ``version``: before 1.4 the tag is
    the last ``tag_length`` bytes of Data (too short a Data holds no whole tag: what it
    holds is taken for one, and the decryption fails as any unverifiable one does,
    Cryptographic Failure)."""
    if tag is not None or version >= TAG_FIELD_VERSION:
        return data, tag
    if len(data) < tag_length:
        return b"", data
    return data[:len(data) - tag_length], data[len(data) - tag_length:]
