"""Shards written by the shard worker in this process (no Ray), for tests of the merge: one job read
from the database's profile as the Ray driver reads it, one engine, the files in plan order."""

from __future__ import annotations

from pathlib import Path

import torch

from convis_db.engine.settings import Settings
from convis_db.store.db import connect


def write_shards(db: Path, files: list[str], shards: Path, settings: Settings, shard_size: int) -> Path:
    """Explain `files` (absolute paths) into finished shards of `shard_size` under `shards`; returns it."""
    from convis_db.distributed.shard_worker import ShardJob, build_engine, explain_shard
    from convis_db.distributed.shards import plan_shards
    from convis_db.profile import read_profile

    con = connect(db)
    try:
        profile = read_profile(con, str(db))
        definitions, levels = profile.engine_inputs(con)
    finally:
        con.close()
    job = ShardJob(spec=profile.spec, definitions=definitions, levels=levels, settings=settings,
                   storage=profile.embeddings, shards_dir=str(shards), batch_size=16)
    engine = build_engine(job, torch.device("cpu"))
    for name, chunk in plan_shards(files, shard_size):
        explain_shard(engine, job, name, chunk)
    return shards
