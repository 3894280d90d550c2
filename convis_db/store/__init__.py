"""The DuckDB store: connections, migrations, and the repositories that read and write tables."""
