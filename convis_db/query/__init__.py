"""Read-only questions asked of a database: concepts, search, regions, explain, stats."""
