"""What a file's block size and row group size cost its writer (issue 24): images written one
write_image transaction each (as ingest writes them) into files of each setting, side by side (image
i goes into every file before image i + 1 goes into any, so all see the same load), and every
--batch images the concept index refreshed and the file checkpointed, as after one `ingest` run.

No model runs: the explanations are bench_merge's generated ones (paper settings: 640 x 480 photos,
1,739 windows, top-100; |T| = 7,080 from WordNet's physical objects), the same in every file. The
question it answers: with row groups of 1M rows, is the partly filled last row group rewritten at
every checkpoint (write and checkpoint times growing as it fills, free blocks piling up)?

    python benchmarks/bench_file_settings.py --images 300 --batch 25 --file-settings default,shipped

Per setting: write_image ms (median of each tenth of the run), refresh + checkpoint ms per batch
(first and last), file growth and free blocks per image at the end, and a point read (one image's
concept_peaks rows, median of 7) on the finished file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_merge import explanation, make_database  # noqa: E402
from common import file_settings, header, parse_file_settings, timeit  # noqa: E402

from convis_db.engine.settings import Settings  # noqa: E402
from convis_db.store.concept_index import refresh_concept_index  # noqa: E402
from convis_db.store.db import connect  # noqa: E402
from convis_db.store.image_store import write_image  # noqa: E402


def file_state(con) -> tuple[int, int, int]:
    """(block size, total blocks, free blocks) of the connection's file."""
    return con.execute("SELECT block_size, total_blocks, free_blocks FROM pragma_database_size() "
                       "WHERE database_name = current_database()").fetchone()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--batch", type=int, default=25, help="Images per 'ingest run': refresh and CHECKPOINT after each.")
    ap.add_argument("--embeddings", choices=("float32", "float16", "none"), default="none")
    ap.add_argument("--file-settings", type=parse_file_settings, default=parse_file_settings("default,shipped"),
                    metavar="BLOCK:ROWS,...")
    ap.add_argument("--work", type=Path, help="Folder for the files (default: a temp dir, deleted after).")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    header(f"bench_file_settings: {args.images} generated images, refresh + CHECKPOINT every {args.batch}, "
           f"embeddings {args.embeddings}")
    work = args.work or Path(tempfile.mkdtemp(prefix="convis-bench-file-settings-"))
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings()
    runs = {}
    for block, rows in args.file_settings:
        label = f"{block // 1024}KiB/{rows}"
        db = work / f"{label.replace('/', '-')}.duckdb"
        with file_settings(block, rows):
            n_syn = make_database(db, args.embeddings)
            con = connect(db, write=True)  # keeps the row group size it was attached with
        runs[label] = {"db": db, "con": con, "empty": db.stat().st_size, "write_ms": [], "batch_ms": []}
    model_id = 1
    rngs = {label: np.random.default_rng(0) for label in runs}  # the same explanations in every file
    for i in range(args.images):
        for label, run in runs.items():
            exp = explanation(rngs[label], settings, n_syn)
            sha = f"{i:064x}"
            t = time.perf_counter()
            write_image(run["con"], exp, sha, f"/generated/{i}.jpg", model_id, settings, "fp32")
            run["write_ms"].append((time.perf_counter() - t) * 1000)
            if (i + 1) % args.batch == 0 or i + 1 == args.images:
                t = time.perf_counter()
                refresh_concept_index(run["con"])
                run["con"].execute("CHECKPOINT")
                run["batch_ms"].append((time.perf_counter() - t) * 1000)
        if (i + 1) % args.batch == 0:
            print(f"  {i + 1} images: " + "; ".join(
                f"{label} write {statistics.median(r['write_ms'][-args.batch:]):5.0f} ms, refresh+checkpoint "
                f"{r['batch_ms'][-1]:5.0f} ms" for label, r in runs.items()) + f"; load {os.getloadavg()[0]:.1f}",
                flush=True)
    results = {}
    for label, run in runs.items():
        con = run.pop("con")
        block, total, free = file_state(con)
        read = timeit(lambda con=con: con.execute("SELECT * FROM concept_peaks WHERE image_id = ?",
                                                  [args.images // 2]).fetchall())
        groups = con.execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('concept_peaks')").fetchone()[0]
        con.close()
        tenth = max(1, args.images // 10)
        w = run["write_ms"]
        results[label] = {
            "write_ms_by_tenth": [statistics.median(w[j:j + tenth]) for j in range(0, len(w), tenth)],
            "batch_ms": run["batch_ms"], "bytes_per_image": (run["db"].stat().st_size - run["empty"]) / args.images,
            "free_bytes_per_image": free * block / args.images, "free_blocks": free, "total_blocks": total,
            "point_read_ms": read["median_ms"], "concept_peaks_row_groups": groups}
        r = results[label]
        print(f"{label:16s} write_image ms by tenth of the run: {' '.join(f'{x:.0f}' for x in r['write_ms_by_tenth'])}; "
              f"refresh+checkpoint first {r['batch_ms'][0]:.0f} / median {statistics.median(r['batch_ms']):.0f} / "
              f"last {r['batch_ms'][-1]:.0f} ms; {r['bytes_per_image'] / 1e3:.0f} KB per image (free "
              f"{r['free_bytes_per_image'] / 1e3:.0f} KB, {free} of {total} blocks); concept_peaks {groups} row "
              f"groups; one image's concept_peaks rows {r['point_read_ms']:.1f} ms")
    print(f"load after: {os.getloadavg()}")
    if args.json:
        print(json.dumps(results))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
