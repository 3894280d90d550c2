"""`init`: build T for a vocabulary, register a model, and embed every definition with it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convis_db.errors import DatabaseError
from convis_db.models.clip import load_model
from convis_db.models.registry import ModelSpec
from convis_db.progress import Progress, no_progress
from convis_db.store.db import connect
from convis_db.store.image_store import embedding_storage, set_embedding_storage
from convis_db.store.hierarchy_store import stored_vocabulary, write_hierarchy
from convis_db.store.model_store import find_model_id, has_definition_embeddings, register_model, write_definition_embeddings
from convis_db.wordnet.hierarchy import build_hierarchy
from convis_db.wordnet.source import open_wordnet
from convis_db.wordnet.vocab import load_vocabulary

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    db: str
    vocabulary: str
    n_synsets: int
    n_edges: int
    n_closure_pairs: int
    missing_words: list[str] = field(default_factory=list)
    model: str = ""
    model_id: int = 0
    is_random: bool = False
    built_hierarchy: bool = False
    embedded_definitions: int = 0
    embeddings: str = "float32"     # how window embeddings are stored (init --embeddings)


def initialise(db_path: str | Path, vocab_spec: str, spec: ModelSpec, device: torch.device,
               batch_size: int = 256, progress: Progress = no_progress, embeddings: str | None = None) -> InitReport:
    """Create or extend a database. Idempotent: a second run with the same arguments changes nothing.

    `embeddings` (float32, float16 or none; None keeps the database's, float32 for a new one) is how
    window embeddings will be stored; it can change only while the database holds no images.
    """
    vocab = load_vocabulary(vocab_spec)  # before creating anything: a bad --vocab leaves no file behind
    # A new database needs the model: load it first, so that weights that cannot be had (offline)
    # fail before any file is made or any minute is spent on the hierarchy.
    preloaded = None if Path(db_path).exists() else load_model(spec, device)
    con = connect(db_path, write=True, create=True)
    try:
        stored = stored_vocabulary(con)
        built = False
        if stored is None:
            wn = open_wordnet()
            h = build_hierarchy(wn, vocab)
            write_hierarchy(con, h, vocab, wn.get_version())
            built = True
        elif vocab.fingerprint != stored["words_sha256"]:
            raise DatabaseError(
                f"{db_path} already holds vocabulary {stored['name']!r} ({stored['source']}); one database holds "
                f"one vocabulary, and {vocab.source} has other words. Use another --db for it."
            )
        if embeddings is not None:
            set_embedding_storage(con, embeddings, str(db_path))
        model_id, embedded = _ensure_model(con, spec, device, batch_size, progress, preloaded)
        counts = con.execute(
            "SELECT (SELECT count(*) FROM synsets), (SELECT count(*) FROM isa_edges), (SELECT count(*) FROM closure)"
        ).fetchone()
        vocab_row = stored_vocabulary(con)
        return InitReport(
            db=str(db_path), vocabulary=vocab_row["name"], n_synsets=counts[0], n_edges=counts[1],
            n_closure_pairs=counts[2], missing_words=list(vocab_row["missing_words"]), model=spec.label,
            model_id=model_id, is_random=spec.is_random, built_hierarchy=built, embedded_definitions=embedded,
            embeddings=embedding_storage(con),
        )
    finally:
        con.close()


def _ensure_model(con, spec: ModelSpec, device: torch.device, batch_size: int, progress: Progress,
                  preloaded=None) -> tuple[int, int]:
    """Register the model and embed definitions if needed: (model_id, definitions embedded now)."""
    mid = find_model_id(con, spec)
    if mid is not None and has_definition_embeddings(con, mid):
        return mid, 0
    loaded = preloaded or load_model(spec, device)
    definitions = [r[0] for r in con.execute("SELECT definition FROM synsets ORDER BY synset_id").fetchall()]
    with progress("Embedding definitions", len(definitions), "synsets") as tick:
        emb = loaded.encode_text(definitions, batch_size=batch_size, progress=tick)
    con.execute("BEGIN TRANSACTION")
    try:
        mid = register_model(con, loaded)
        write_definition_embeddings(con, mid, emb)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    log.info("embedded %d definitions with %s", len(definitions), spec.label)
    return mid, len(definitions)
