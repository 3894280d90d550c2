"""The bank of textual concepts that both encoders are described with.

Default: the definitions of T, already embedded with the database's model (definition_embeddings),
so explanations work offline and join with the rest of the database (entry i is synset_id i).
Or a descriptor file in the authors' format, a JSON object {class name: [descriptor, ...]}: its
descriptors (duplicates merged) are embedded alone, without the class name (the authors' "no class"
concept classifier), once per model, and stored in mutual_banks / mutual_bank_entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from convis_db.errors import UsageError
from convis_db.progress import Progress, no_progress
from convis_db.store.arrow_io import fetch_arrow, insert_arrow, list_column_to_matrix, matrix_to_list_array
from convis_db.store.transaction import transaction

log = logging.getLogger(__name__)


@dataclass
class ConceptBank:
    kind: str                          # "definitions" or "descriptors"
    texts: list[str]                   # what is shown and embedded
    embeddings: np.ndarray             # (n, E) float32, L2-normalised
    names: list[str]                   # synset names (definitions) or "class1, class2" (descriptors)
    synset_ids: list[int] | None = None
    bank_id: int | None = None         # mutual_banks row of a stored descriptor bank
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def label(self, i: int) -> str:
        """One line for entry i: 'dog.n.01: a member of the genus Canis ...' or the descriptor."""
        return f"{self.names[i]}: {self.texts[i]}" if self.kind == "definitions" else self.texts[i]


def definitions_bank(con: duckdb.DuckDBPyConnection, model_id: int) -> ConceptBank:
    from convis_db.store.model_store import load_definition_embeddings

    emb = load_definition_embeddings(con, model_id)
    rows = con.execute("SELECT synset_id, name, definition FROM synsets ORDER BY synset_id").fetchall()
    return ConceptBank("definitions", [r[2] for r in rows], emb, [r[1] for r in rows], [int(r[0]) for r in rows],
                       source="definitions of T")


def read_descriptor_file(path: str | Path) -> tuple[list[str], list[list[str]], dict[str, list[str]]]:
    """(unique descriptors in file order, classes of each, the file's mapping). UsageError if malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such descriptor file.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a JSON descriptor file ({exc}). Expected {{\"class\": [\"descriptor\", ...]}}.") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{path}: expected a non-empty JSON object {{\"class\": [\"descriptor\", ...]}}.")
    texts: list[str] = []
    classes: list[list[str]] = []
    index: dict[str, int] = {}
    for cls, items in data.items():
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            raise UsageError(f"{path}: the value of {cls!r} must be a list of descriptor strings.")
        for text in items:
            text = " ".join(text.split())
            if not text:
                continue
            if text not in index:
                index[text] = len(texts)
                texts.append(text)
                classes.append([])
            if cls not in classes[index[text]]:
                classes[index[text]].append(cls)
    if not texts:
        raise UsageError(f"{path}: the file lists no descriptors.")
    return texts, classes, data


def stored_bank_id(con: duckdb.DuckDBPyConnection, model_id: int, path: str | Path) -> int | None:
    """The mutual_banks row of this file's bytes for this model, if stored."""
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    row = con.execute("SELECT bank_id FROM mutual_banks WHERE model_id = ? AND sha256 = ?", [model_id, sha]).fetchone()
    return int(row[0]) if row else None


def descriptor_bank(con: duckdb.DuckDBPyConnection, model, model_id: int, path: str | Path,
                    store: bool = True, progress: Progress = no_progress) -> ConceptBank:
    """The bank of a descriptor file: read from the database when stored for this model, else embedded
    (and stored when `store`, which needs a connection opened for writing)."""
    path = Path(path)
    texts, classes, _ = read_descriptor_file(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    names = [", ".join(c) for c in classes]
    bank_id = stored_bank_id(con, model_id, path)
    if bank_id is not None:
        tbl = fetch_arrow(con, "SELECT embedding FROM mutual_bank_entries WHERE bank_id = ? ORDER BY entry_idx", [bank_id])
        return ConceptBank("descriptors", texts, list_column_to_matrix(tbl.column("embedding")), names,
                           bank_id=bank_id, source=str(path))
    log.info("embedding %d descriptors of %s", len(texts), path)
    with progress("Embedding descriptors", len(texts), "texts") as tick:
        emb = np.asarray(model.encode_text(texts, progress=tick), dtype=np.float32)
    bank = ConceptBank("descriptors", texts, emb, names, source=str(path))
    if store:
        bank.bank_id = _store(con, model_id, path.name, sha, texts, classes, emb)
    return bank


def _store(con, model_id: int, name: str, sha: str, texts: list[str], classes: list[list[str]], emb: np.ndarray) -> int:
    with transaction(con):
        bank_id = int(con.execute("INSERT INTO mutual_banks (model_id, name, sha256, n_entries) VALUES (?, ?, ?, ?) "
                                  "RETURNING bank_id", [model_id, name, sha, len(texts)]).fetchone()[0])
        table = pa.table({
            "bank_id": pa.array(np.full(len(texts), bank_id, np.int32)),
            "entry_idx": pa.array(np.arange(len(texts), dtype=np.int32)),
            "text": pa.array(texts),
            "classes": pa.array(classes, type=pa.list_(pa.string())),
            "embedding": matrix_to_list_array(emb),
        })
        insert_arrow(con, "mutual_bank_entries", table)
    return bank_id
