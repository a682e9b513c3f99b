"""The gateway↔core link (docs/link-protocol.md): frames, and the connection machinery both
ends share."""
