"""Cipher primitives as KMIP uses them, free of stored objects (shared by core and gateway)."""
