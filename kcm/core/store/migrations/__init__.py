"""Alembic migration environment of the KSI (loaded by Alembic, not imported by KCM)."""
