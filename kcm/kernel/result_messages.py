"""What a Result Message may hold: short printable ASCII, whatever an error said.

A Result Message is the server's own text (KMIP 1.4 §6.11, a Text String). Clients print
it, log it, and some decode it with assumptions of their own (PyKMIP 0.11 reads it as
ASCII and raises UnicodeDecodeError on anything else). So every message is made printable
ASCII here, where a failed item is built (:func:`kcm.kernel.responses.fail_item`), and no
longer than :data:`MAX_LENGTH` characters: an error that repeats what a client sent can
never make an answer long or unreadable. Errors should name client input by a short
label already (:func:`kcm.kernel.missing.identifier_label`); this is the bound that holds
even when one does not.
"""

from __future__ import annotations

__all__ = ["MAX_LENGTH", "result_message"]

#: The longest Result Message a server sends, in characters (= bytes: ASCII).
MAX_LENGTH = 240

_ELLIPSIS = "..."
_SPELLED = {"\u2026": "...", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
            "\u2013": "-", "\u2014": "-", "\u2192": "->", "\u00a7": "S"}


def result_message(text: str) -> str:
    """``text`` as a Result Message: printable ASCII (a few typographic characters spelled
    in ASCII, anything else ``?``; line breaks become spaces), at most :data:`MAX_LENGTH`
    characters, cut with ``...``."""
    if text.isascii() and text.isprintable() and len(text) <= MAX_LENGTH:
        return text
    out = []
    for char in text[:MAX_LENGTH * 2]:
        if " " <= char <= "~":
            out.append(char)
        elif char in "\t\r\n":
            out.append(" ")
        else:
            out.append(_SPELLED.get(char, "?"))
    message = "".join(out)
    if len(message) > MAX_LENGTH or len(text) > MAX_LENGTH * 2:
        message = message[:MAX_LENGTH - len(_ELLIPSIS)] + _ELLIPSIS
    return message
