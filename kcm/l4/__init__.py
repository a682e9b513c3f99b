"""L4 data-encryption keys: sealed tokens, who may use them, and the four local operations.

Shared by kcm-gateway (the hot path) and kcm-core (the same operations sent straight to the
core). Everything here is pure: no I/O, no logging, no clock (docs/link-protocol.md §3).
"""
