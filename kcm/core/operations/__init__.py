"""The operation handlers of kcm-core. Importing this package registers them all
in :data:`kcm.core.batch.OPERATIONS`; each module handles one family of operations."""

from kcm.core.operations import create, lifecycle_ops  # noqa: F401
