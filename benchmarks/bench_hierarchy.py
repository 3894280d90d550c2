"""Loading and reading the hierarchy T in memory (StoredHierarchy): the one copy that the engine,
`concepts`, `explain` and the web explorer share.

Builds T from WordNet (physical-objects: ~7,300 synsets; all-nouns: ~82,000) in a database with no
model, then times, cold (a fresh load per call, as one CLI command does) and warm (the hierarchy a
`Database` or the explorer keeps): loading T with the engine's propagation levels, the text columns,
`concepts` lookups, and a concept's descendants (closure table vs the in-memory DAG).

    python benchmarks/bench_hierarchy.py --vocab physical-objects
    python benchmarks/bench_hierarchy.py --vocab all-nouns --db /tmp/allnouns.duckdb   # builds in ~1 min
    PYTHONPATH=/path/to/older/checkout python benchmarks/bench_hierarchy.py --db /tmp/allnouns.duckdb  # before

Run against a checkout from before the one hierarchy (PYTHONPATH), it prints the cold rows only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header, timeit  # noqa: E402

from convis_db.query.concepts import concept_ancestors, concept_children, find_concepts  # noqa: E402
from convis_db.store.db import connect  # noqa: E402
from convis_db.store.hierarchy_store import descendant_ids, load_hierarchy, write_hierarchy  # noqa: E402
from convis_db.wordnet.hierarchy import build_hierarchy  # noqa: E402
from convis_db.wordnet.source import open_wordnet  # noqa: E402
from convis_db.wordnet.vocab import load_vocabulary  # noqa: E402


def build(db: Path, vocab_name: str) -> float:
    t0 = time.perf_counter()
    con = connect(db, write=True, create=True)
    vocab = load_vocabulary(vocab_name)
    wn = open_wordnet()
    write_hierarchy(con, build_hierarchy(wn, vocab), vocab, wn.get_version())
    con.execute("CHECKPOINT")
    con.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", default="physical-objects")
    ap.add_argument("--db", type=Path, help="Reuse or create the database here (default: a temp dir).")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    header(f"bench_hierarchy: vocabulary {args.vocab}")
    tmp = tempfile.TemporaryDirectory()
    db = args.db or Path(tmp.name) / "hierarchy.duckdb"
    if not db.exists():
        print(f"built {db} in {build(db, args.vocab):.1f} s")
    con = connect(db)
    h = load_hierarchy(con)
    print(f"synsets {h.size}, is-a edges {len(h.parent)}")
    r = args.repeat
    rows = {"load T + propagation levels (engine)": timeit(lambda: load_hierarchy(con).propagation_levels, r)}
    one_copy = hasattr(h, "load_text")  # False on a checkout from before StoredHierarchy: cold rows only
    if one_copy:
        rows |= {
            "load T + children lists": timeit(lambda: load_hierarchy(con).children, r),
            "load T + text columns + suggest keys (explorer)": timeit(lambda: load_hierarchy(con).load_text().lemma_keys, r),
        }
    rows |= {
        "concepts 'dog' (cold)": timeit(lambda: find_concepts(con, "dog"), r),
        "concepts 'domesticated animal' words (cold)": timeit(lambda: find_concepts(con, "domesticated animal"), r),
        "children entity.n.01 (cold)": timeit(lambda: concept_children(con, "entity.n.01"), r),
        "ancestors dog.n.01 (cold)": timeit(lambda: concept_ancestors(con, "dog.n.01"), r),
    }
    root, dog = (con.execute("SELECT synset_id FROM synsets WHERE name = ?", [n]).fetchone()[0]
                 for n in ("entity.n.01", "dog.n.01"))
    rows |= {
        "descendants entity.n.01: closure table": timeit(lambda: descendant_ids(con, root), r),
        "descendants dog.n.01: closure table": timeit(lambda: descendant_ids(con, dog), r),
    }
    if one_copy:
        h.load_text()
        rows |= {
            "concepts 'dog' (warm)": timeit(lambda: find_concepts(con, "dog", hierarchy=h), r),
            "children entity.n.01 (warm)": timeit(lambda: concept_children(con, "entity.n.01", hierarchy=h), r),
            "descendants entity.n.01: in-memory DAG": timeit(lambda: h.descendants(root), r),
            "descendants dog.n.01: in-memory DAG": timeit(lambda: h.descendants(dog), r),
        }
    con.close()
    for k, v in rows.items():
        print(f"{k:48s} median {v['median_ms']:8.2f} ms   min {v['min_ms']:8.2f} ms")


if __name__ == "__main__":
    main()
