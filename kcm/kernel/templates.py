"""Templates (KMIP 1.x; deprecated in 1.3, gone in 2.0): kept, never applied.

Register stores a Template object, and Get, Locate and the attribute operations serve it as
any other; a request that names templates in its Template-Attribute (Create, Create Key
Pair, Register, Re-key, an L4 Create at the gateway) would ask the server to apply their
attributes, which KCM does not do. It answers Feature Not Supported (the template may
well exist: Item Not Found would say it does not), on both planes alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError

__all__ = ["refuse_template_names"]


def refuse_template_names(names: Sequence[object] | None) -> None:
    """Refuse a request naming templates (see the module's description)."""
    if names:
        raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                        "templates are kept but not applied: send the attributes instead")
