"""kcm-gateway: the L4 data plane in front of kcm-core (ARCHITECTURE §2-§5)."""
