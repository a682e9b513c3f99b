"""The one type for a KMIP protocol version: ``(major, minor)``, compared as a tuple."""

from __future__ import annotations

Version = tuple[int, int]

__all__ = ["Version"]
