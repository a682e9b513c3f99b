"""The key-state inventory (KSI): schema, migrations, engine and repository."""
