"""kcm-core: the control plane (key hierarchy, lifecycle, KSI, audit, gateway events)."""
