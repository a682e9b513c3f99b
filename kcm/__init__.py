"""KCM: a KMIP key-management suite on Twisted."""

__version__ = "0.1.0"
