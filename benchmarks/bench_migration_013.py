"""How long schema 013's rewrite takes (image_scores and concept_index into concept_peaks and
concept_order), per image, at the paper's |T|, and what it does to the file.

A database at schema 012 is built from the shipped migrations with |T| generated synsets and N
generated images: each image's |T| image_scores rows hold DOUBLE peaks made as the engine makes them
(an integer sum over 64 covering windows, / (64 x |T|)), and concept_index holds them again in concept
order, as one sorted run. Then the upgrade runs as convis-db runs it (migrate: the batched step with its
bars, then the SQL), timed; the answers are checked (every view row equals the DOUBLE it replaced).

    python benchmarks/bench_migration_013.py --images 1000
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header  # noqa: E402

from convis_db.store.migrations import available_migrations, migrate  # noqa: E402


def build_012(path: Path, n_synsets: int, n_images: int) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
                "checksum VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)")
    for mig in available_migrations():
        if mig.version < 13:
            con.execute(mig.sql)
            con.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (?, ?, ?)",
                        [mig.version, mig.name, mig.checksum])
    con.execute("""INSERT INTO synsets SELECT i, 'synset.n.' || i, i, ['s' || i], 'generated', 1, 'noun.artifact', false
                   FROM range(?) t(i)""", [n_synsets])
    con.execute("""INSERT INTO images (sha256, path, model_id, width, height, work_width, work_height, scale, stride,
                       small, large, max_pixels, top_k, grid_rows, grid_cols, n_windows, layout)
                   SELECT sha256(i::VARCHAR), 'generated/' || i, 1, 640, 480, 632, 474, 640.0 / 632, 16, 64, 128,
                          300000, 100, 37, 47, 1739, 'equal' FROM range(1, ? + 1) t(i)""", [n_images])
    t0 = time.perf_counter()
    con.execute(f"""INSERT INTO image_scores
        SELECT image_id, synset_id, s1::DOUBLE / (64::DOUBLE * {n_synsets}::DOUBLE), h % 632, h % 474,
               s2::DOUBLE / (64::DOUBLE * {n_synsets}::DOUBLE), (h // 7) % 632, (h // 7) % 474,
               r1 + r2 % ({n_synsets} - r1), r1
        FROM (SELECT (x // {n_synsets} + 1)::INT AS image_id, (x % {n_synsets})::INT AS synset_id,
                     hash(x) AS h, (hash(x) % (64 * {n_synsets}))::INT AS s1,
                     (hash(x + 1) % (64 * {n_synsets}))::INT AS s2,
                     (hash(x + 2) % {n_synsets})::INT AS r1, hash(x + 3) AS r2
              FROM range(0, ?) t(x))""", [n_images * n_synsets])
    con.execute("INSERT INTO concept_index SELECT synset_id, image_id, score, work_peak_x, work_peak_y, self_score, "
                "work_self_peak_x, work_self_peak_y, image_max_rank_less, image_rank_less "
                "FROM image_scores ORDER BY synset_id, score DESC, image_id")
    con.execute("UPDATE concept_index_state SET indexed_through = ?, runs = 1", [n_images])
    con.execute("CHECKPOINT")
    print(f"  built schema 012 with {n_images:,} images x {n_synsets:,} synsets in {time.perf_counter() - t0:.0f} s",
          flush=True)
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--synsets", type=int, default=7080, help="|T| (the physical-objects hierarchy: 7,080)")
    args = ap.parse_args()
    header(f"bench_migration_013: {args.images:,} images, |T| = {args.synsets:,}")
    with tempfile.TemporaryDirectory(prefix="bench-migration-013-") as tmp:
        db = Path(tmp) / "old.duckdb"
        build_012(db, args.synsets, args.images)
        before = db.stat().st_size
        con = duckdb.connect(str(db))
        con.execute("SET enable_progress_bar = false")
        expected = con.execute("SELECT sum(hash(image_id, synset_id, score, self_score)) FROM image_scores").fetchone()[0]

        @contextlib.contextmanager
        def bar(desc, total, unit="it"):
            start = time.perf_counter()
            yield lambda n=1, **postfix: None
            print(f"  {desc}: {total:,} {unit} in {time.perf_counter() - start:.1f} s", flush=True)

        t0 = time.perf_counter()
        assert migrate(con, str(db), progress=bar) == [13]
        seconds = time.perf_counter() - t0
        got = con.execute("SELECT sum(hash(image_id, synset_id, score, self_score)) FROM image_scores").fetchone()[0]
        con.execute("CHECKPOINT")
        con.close()
        print(f"upgrade: {seconds:.1f} s, {seconds / args.images * 1000:.1f} ms per image "
              f"({seconds / args.images * 10_000 / 60:.1f} min per 10,000 images); views equal the old rows: "
              f"{got == expected}; file {before / 1e6:.1f} -> {db.stat().st_size / 1e6:.1f} MB (the old tables' "
              "blocks become free blocks)")


if __name__ == "__main__":
    main()
