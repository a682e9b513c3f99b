"""TTLV: the KMIP binary encoding. Pure functions over bytes; no I/O."""

from kcm.ttlv.codec import DEFAULT_MAX_DEPTH, DEFAULT_MAX_SIZE, decode, decode_item, encode
from kcm.ttlv.errors import MessageTooLarge, TtlvError
from kcm.ttlv.types import TYPE_NAMES, TYPES_BY_NAME, Item, ItemType, structure

__all__ = [
    "DEFAULT_MAX_DEPTH", "DEFAULT_MAX_SIZE", "Item", "ItemType", "MessageTooLarge",
    "TYPES_BY_NAME", "TYPE_NAMES", "TtlvError", "decode", "decode_item", "encode", "structure",
]
