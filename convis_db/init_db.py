"""`init`: build T for a vocabulary, register a model, and embed every definition with it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convis_db.errors import DatabaseError
from convis_db.models.clip import load_model
from convis_db.models.precision import precision_label, resolve_precision
from convis_db.models.registry import ModelSpec
from convis_db.progress import Progress, no_progress
from convis_db.store.db import connect
from convis_db.store.image_store import embedding_storage, set_embedding_storage
from convis_db.store.hierarchy_store import stored_vocabulary, write_hierarchy
from convis_db.store.model_store import (
    definition_precision,
    find_model_id,
    has_definition_embeddings,
    register_model,
    write_definition_embeddings,
)
from convis_db.wordnet.hierarchy import DEFAULT_HIERARCHY, build_hierarchy, check_hierarchy_kind
from convis_db.wordnet.source import open_wordnet
from convis_db.wordnet.vocab import load_vocabulary
from convis_db.store.transaction import transaction

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    db: str
    vocabulary: str
    hierarchy: str
    n_synsets: int
    n_edges: int
    n_closure_pairs: int
    missing_words: list[str] = field(default_factory=list)
    model: str = ""
    model_id: int = 0
    is_random: bool = False
    built_hierarchy: bool = False
    embedded_definitions: int = 0
    precision: str = ""             # the precision asked for (resolved): used for definitions embedded now
    definition_precision: str = ""  # the precision of the stored definitions ('unrecorded' before schema 007)
    embeddings: str = "float32"     # how window embeddings are stored (init --embeddings)


def initialise(db_path: str | Path, vocab_spec: str, spec: ModelSpec, device: torch.device,
               batch_size: int = 256, progress: Progress = no_progress, hierarchy: str | None = None,
               precision: str | None = None, embeddings: str | None = None) -> InitReport:
    """Create or extend a database. Idempotent: a second run with the same arguments changes nothing.

    `hierarchy` is how T is built ('reference', the authors' T, or 'extended'); None means the
    default for a new database and whatever an existing one holds. Definitions are embedded in
    `precision` (None: the device's default) and it is recorded with them; definitions already
    stored are kept as they are, whatever precision is asked for now. `embeddings` (float32, float16
    or none; None keeps the database's, float32 for a new one) is how window embeddings will be
    stored; it can change only while the database holds no images.
    """
    precision = resolve_precision(precision, device)  # before anything: an impossible one leaves no file
    vocab = load_vocabulary(vocab_spec)  # before creating anything: a bad --vocab leaves no file behind
    if hierarchy is not None:
        check_hierarchy_kind(hierarchy)
    # A new database needs the model: load it first, so that weights that cannot be had (offline)
    # fail before any file is made or any minute is spent on the hierarchy.
    preloaded = None if Path(db_path).exists() else load_model(spec, device, precision)
    con = connect(db_path, write=True, create=True)
    try:
        stored = stored_vocabulary(con)
        built = False
        if stored is None:
            wn = open_wordnet()
            h = build_hierarchy(wn, vocab, hierarchy or DEFAULT_HIERARCHY)
            write_hierarchy(con, h, vocab, wn.get_version())
            built = True
        elif vocab.fingerprint != stored["words_sha256"]:
            raise DatabaseError(
                f"{db_path} already holds vocabulary {stored['name']!r} ({stored['source']}); one database holds "
                f"one vocabulary, and {vocab.source} has other words. Use another --db for it."
            )
        elif hierarchy is not None and hierarchy != stored["hierarchy"]:
            raise DatabaseError(
                f"{db_path} holds T built with --hierarchy {stored['hierarchy']}; one database holds one T. "
                f"Drop --hierarchy {hierarchy} to use it, or build another --db with --hierarchy {hierarchy}."
            )
        if embeddings is not None:
            set_embedding_storage(con, embeddings, str(db_path))
        model_id, embedded = _ensure_model(con, spec, device, batch_size, progress, preloaded, precision)
        counts = con.execute(
            "SELECT (SELECT count(*) FROM synsets), (SELECT count(*) FROM isa_edges), (SELECT count(*) FROM closure)"
        ).fetchone()
        vocab_row = stored_vocabulary(con)
        return InitReport(
            db=str(db_path), vocabulary=vocab_row["name"], hierarchy=vocab_row["hierarchy"], n_synsets=counts[0], n_edges=counts[1],
            n_closure_pairs=counts[2], missing_words=list(vocab_row["missing_words"]), model=spec.label,
            model_id=model_id, is_random=spec.is_random, built_hierarchy=built, embedded_definitions=embedded,
            precision=precision, definition_precision=precision_label(definition_precision(con, model_id)),
            embeddings=embedding_storage(con),
        )
    finally:
        con.close()


def _ensure_model(con, spec: ModelSpec, device: torch.device, batch_size: int, progress: Progress,
                  preloaded=None, precision: str = "fp32") -> tuple[int, int]:
    """Register the model and embed definitions if needed: (model_id, definitions embedded now)."""
    mid = find_model_id(con, spec)
    if mid is not None and has_definition_embeddings(con, mid):
        stored = definition_precision(con, mid)
        if stored != precision:
            log.info("definitions of %s are kept as stored (%s); %s applies to new embeddings only",
                     spec.label, precision_label(stored), precision)
        return mid, 0
    loaded = preloaded or load_model(spec, device, precision)
    definitions = [r[0] for r in con.execute("SELECT definition FROM synsets ORDER BY synset_id").fetchall()]
    with progress("Embedding definitions", len(definitions), "synsets") as tick:
        emb = loaded.encode_text(definitions, batch_size=batch_size, progress=tick)
    with transaction(con):
        mid = register_model(con, loaded)
        write_definition_embeddings(con, mid, emb, loaded.precision)
    log.info("embedded %d definitions with %s in %s", len(definitions), spec.label, loaded.precision)
    return mid, len(definitions)
