"""The operation handlers of kcm-core, and :data:`HANDLERS`, the one table that says which
handler answers which Operation.

Each module handles one family of operations; a handler is a plain function that takes the
:class:`~kcm.core.context.OperationContext` and the typed request payload and returns the
response payload (a model, a raw Item, or None for no payload). Nothing registers itself:
an operation is served when, and only when, it is in the table below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from kcm.core.context import OperationContext
from kcm.core.operations import (
    asymmetric_ops,
    attribute_ops,
    create,
    crypto_ops,
    derive,
    get,
    hash_rng_ops,
    lifecycle_ops,
    locate,
    mac_ops,
    register,
    rekey,
    service_ops,
)
from kcm.kmip.enums import Operation

__all__ = ["HANDLERS", "READ_ONLY", "STORELESS", "OperationHandler"]

OperationHandler = Callable[[OperationContext, Any], Any]

_O = Operation

#: Operation -> the handler that answers it.
HANDLERS: Mapping[int, OperationHandler] = MappingProxyType({
    # Objects
    _O.CREATE: create.create,
    _O.CREATE_KEY_PAIR: asymmetric_ops.create_key_pair,
    _O.REGISTER: register.register,
    _O.RE_KEY: rekey.re_key,
    _O.DERIVE_KEY: derive.derive_key,
    _O.LOCATE: locate.locate,
    _O.GET: get.get,
    # Attributes
    _O.GET_ATTRIBUTES: attribute_ops.get_attributes,
    _O.GET_ATTRIBUTE_LIST: attribute_ops.get_attribute_list,
    _O.ADD_ATTRIBUTE: attribute_ops.add_attribute,
    _O.MODIFY_ATTRIBUTE: attribute_ops.modify_attribute,
    _O.DELETE_ATTRIBUTE: attribute_ops.delete_attribute,
    _O.SET_ATTRIBUTE: attribute_ops.set_attribute,
    _O.ADJUST_ATTRIBUTE: attribute_ops.adjust_attribute,
    # Lifecycle
    _O.ACTIVATE: lifecycle_ops.activate,
    _O.REVOKE: lifecycle_ops.revoke,
    _O.DESTROY: lifecycle_ops.destroy,
    # Cryptography
    _O.ENCRYPT: crypto_ops.encrypt,
    _O.DECRYPT: crypto_ops.decrypt,
    _O.CHECK: crypto_ops.check,
    _O.SIGN: asymmetric_ops.sign,
    _O.SIGNATURE_VERIFY: asymmetric_ops.signature_verify,
    _O.MAC: mac_ops.mac,
    _O.MAC_VERIFY: mac_ops.mac_verify,
    _O.HASH: hash_rng_ops.hash_data,
    _O.RNG_RETRIEVE: hash_rng_ops.rng_retrieve,
    _O.RNG_SEED: hash_rng_ops.rng_seed,
    # The server itself
    _O.QUERY: service_ops.query,
    _O.DISCOVER_VERSIONS: service_ops.discover_versions,
    _O.INTEROP: service_ops.interop,
    _O.LOG: service_ops.log_message,
})

#: The operations whose handlers never write: a batch of only these runs in a read-only
#: transaction, beside the writer (its audit records are written after it, before the
#: answer). A handler here that wrote would fail, not write.
READ_ONLY: frozenset[int] = frozenset({
    _O.LOCATE, _O.GET_ATTRIBUTES, _O.GET_ATTRIBUTE_LIST, _O.CHECK, _O.QUERY,
    _O.DISCOVER_VERSIONS,
})

#: The operations whose handlers never read the store either (what the server says about
#: itself): a batch of only these is answered without a transaction, and only its audit
#: records are committed before the answer is sent. Their handlers get no session.
STORELESS: frozenset[int] = frozenset({_O.QUERY, _O.DISCOVER_VERSIONS})
