"""The operation handlers of kcm-core. Importing this package registers them all
in :data:`kcm.core.batch.OPERATIONS`; each module handles one family of operations."""

from kcm.core.operations import (  # noqa: F401
    asymmetric_ops,
    attribute_ops,
    create,
    crypto_ops,
    get,
    lifecycle_ops,
    locate,
    register,
    rekey,
    service_ops,
)
