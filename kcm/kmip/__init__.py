"""KMIP message layer: tags, enumerations and the per-version registry (KMIP 1.0-2.1)."""
