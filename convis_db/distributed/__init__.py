"""Ingest past one process: shards explained by a pool of workers, merged by the one database writer.

shard_worker explains one shard (no Ray needed: it runs inside any worker); ray_ingest drives a Ray
Data pipeline over shards and is the only module that imports Ray (an optional extra,
`pip install convis-db[ray]`).
"""
