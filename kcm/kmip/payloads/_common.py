"""Shared field kinds of the payload modules."""

from __future__ import annotations

from kcm.kmip.fields import Raw, TextOrRaw

#: A Unique Identifier: ``str``, or (2.x requests) the raw Enumeration/Integer reference.
UID = TextOrRaw()
RAW = Raw()
