"""Invariants of a convis-db database that must hold after any fault: every stored image is whole."""

from __future__ import annotations

from pathlib import Path

import duckdb

#: Tables of per-image rows besides the windows' (window_embeddings since schema 021, windows before).
DATA_TABLES = ("image_scores", "window_concepts")


def query(db: str | Path, sql: str, params: list | None = None) -> list[tuple]:
    """Rows of one query on a read-only connection that is closed again at once."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def scalar(db: str | Path, sql: str, params: list | None = None):
    return query(db, sql, params)[0][0]


def broken_images(db: str | Path) -> list[str]:
    """Every way the stored images fall short of whole; empty when all are whole.

    Whole: n_windows rows in windows (window_idx 0..n-1; since schema 021 that table is
    window_embeddings, which holds them where embeddings are kept and none with --embeddings none),
    |T| rows in image_scores (one per synset), n_windows * min(top_k, |T|) rows in window_concepts, and
    no row of those tables without its image. Where the database has a concept_index, it holds |T| rows
    per image up to its watermark.
    """
    con = duckdb.connect(str(db), read_only=True)
    try:
        n_synsets = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
        stored = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        win = "window_embeddings" if "window_embeddings" in stored else "windows"
        kept = con.execute("SELECT embeddings FROM storage_settings").fetchone()[0] != "none" \
            if "storage_settings" in stored else True
        rows = con.execute(
            f"""SELECT i.image_id, i.n_windows, {'i.n_windows' if kept else '0'}, least(i.top_k, ?) AS k,
                      (SELECT count(*) FROM {win} w WHERE w.image_id = i.image_id),
                      (SELECT count(DISTINCT window_idx) FROM {win} w
                        WHERE w.image_id = i.image_id AND window_idx BETWEEN 0 AND i.n_windows - 1),
                      (SELECT count(*) FROM image_scores s WHERE s.image_id = i.image_id),
                      (SELECT count(DISTINCT synset_id) FROM image_scores s WHERE s.image_id = i.image_id),
                      (SELECT count(*) FROM window_concepts c WHERE c.image_id = i.image_id)
               FROM images i ORDER BY i.image_id""", [n_synsets]).fetchall()
        problems = []
        for image_id, n_windows, window_rows, k, n_win, n_win_distinct, n_scores, n_scores_distinct, n_concepts \
                in rows:
            if n_windows < 1:
                problems.append(f"image {image_id}: n_windows {n_windows}")
            if not (n_win == n_win_distinct == window_rows):
                problems.append(f"image {image_id}: {n_win} rows in {win} ({n_win_distinct} distinct), "
                                f"expected {window_rows}")
            if not (n_scores == n_scores_distinct == n_synsets):
                problems.append(f"image {image_id}: {n_scores} image_scores rows, expected {n_synsets}")
            if n_concepts != n_windows * k:
                problems.append(f"image {image_id}: {n_concepts} window_concepts rows, expected {n_windows * k}")
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if {"concept_index", "concept_index_state"} <= tables:
            # The concept-sorted copy of image_scores: whole for every image up to its watermark, and
            # nothing past it (later images are read from image_scores until the next ingest indexes them).
            watermark = con.execute("SELECT indexed_through FROM concept_index_state").fetchone()[0]
            bad = con.execute(
                """SELECT i.image_id, count(c.image_id) FROM images i LEFT JOIN concept_index c USING (image_id)
                   GROUP BY i.image_id
                   HAVING count(c.image_id) != CASE WHEN i.image_id <= ? THEN ? ELSE 0 END""",
                [watermark, n_synsets]).fetchall()
            problems += [f"image {i}: {n} concept_index rows (indexed through {watermark})" for i, n in bad]
            orphans = con.execute("SELECT count(*) FROM concept_index c WHERE NOT EXISTS "
                                  "(SELECT 1 FROM images i WHERE i.image_id = c.image_id)").fetchone()[0]
            if orphans:
                problems.append(f"{orphans} rows in concept_index belong to no stored image")
        for table in (win, *DATA_TABLES):
            orphans = con.execute(
                f"SELECT count(*) FROM {table} t WHERE NOT EXISTS "  # table names from the tuple above
                f"(SELECT 1 FROM images i WHERE i.image_id = t.image_id)").fetchone()[0]
            if orphans:
                problems.append(f"{orphans} rows in {table} belong to no stored image")
        return problems
    finally:
        con.close()


def assert_whole(db: str | Path) -> int:
    """Assert every stored image is whole; returns the number of stored images."""
    problems = broken_images(db)
    assert not problems, "partial images in the database:\n" + "\n".join(problems)
    return scalar(db, "SELECT count(*) FROM images")


def table_counts(db: str | Path) -> dict[str, int]:
    """Row counts of every base table (to show that nothing changed)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "ORDER BY table_name").fetchall()]
        return {n: con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        con.close()


def cli_ok(result) -> str:
    """A click Result that exited 0; its stdout."""
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def cli_user_error(result, *words: str) -> str:
    """Exit 2 with a one-line 'error: ...' on stderr that holds every word; no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    err = result.stderr
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + result.stdout
    for w in words:
        assert w.lower() in err.lower(), (w, err)
    return err
