"""Cryptographic Parameters as an operation runs them: the request's over the key's
(KMIP 1.4 §3.6, 2.1 §4.15). Pure, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from kcm.kmip.attributes import CryptographicParameters

__all__ = ["merge_parameters"]


def merge_parameters(stored: object, requested: CryptographicParameters | None,
                     fields: Iterable[str]) -> CryptographicParameters:
    """The key's stored Cryptographic Parameters (``stored``, when it is one) with each of
    ``fields`` the request sets replaced by the request's value."""
    base = stored if isinstance(stored, CryptographicParameters) else CryptographicParameters()
    if requested is None:
        return base
    overrides = {name: getattr(requested, name) for name in fields
                 if getattr(requested, name) is not None}
    return replace(base, **overrides)
