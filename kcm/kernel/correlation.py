"""Correlation ids: the short name of one request (or one background change) in answers,
audit records and the log, for both planes."""

from __future__ import annotations

import os

__all__ = ["new_correlation_id"]


def new_correlation_id() -> str:
    """A fresh id: 64 random bits as 16 lowercase hex digits (short ASCII, and unlikely to
    repeat across cores and gateways)."""
    return os.urandom(8).hex()
