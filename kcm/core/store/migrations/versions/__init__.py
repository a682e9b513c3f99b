"""Alembic revisions of the KSI schema, one module per revision."""
