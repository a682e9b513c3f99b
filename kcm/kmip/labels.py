"""Names of tags and enumeration values for error messages and logs (short ASCII)."""

from __future__ import annotations

from kcm.kmip import registry

__all__ = ["enum_label", "tag_label"]


def tag_label(tag: int) -> str:
    """A tag's spec name for error messages, or its hex."""
    return registry.tag_name(tag) or registry.tag_name(tag, (1, 4)) or f"0x{tag:06X}"


def enum_label(enum: type, value: object) -> str:
    """``value``'s member name in ``enum``, its hex value when the enumeration has no such
    member, or ``none``."""
    if value is None:
        return "none"
    try:
        return enum(value).name  # type: ignore[call-arg]
    except ValueError:
        return f"0x{int(value):08X}"  # type: ignore[call-overload]
