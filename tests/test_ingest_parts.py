"""The parts of ingest on their own: the explain queue (small images grouped into shared encoder
batches; a failing group explained again image by image so only the image at fault fails) and the
plan (files that failed before are not read)."""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np

from convis_db.engine.images import DecodedImage
from convis_db.engine.settings import Settings
from convis_db.ingest.explaining import ExplainQueue, Queued
from convis_db.ingest.plan import IngestPlan
from convis_db.ingest.report import IngestOutcome
from convis_db.store.db import connect

SETTINGS = Settings(max_pixels=9_000, stride=16, small=32, large=64, top_k=5)


class _Engine:
    """Explains any image but the one whose pixels are all 7 (a stand-in for a model failure)."""

    def __init__(self):
        self.groups: list[int] = []

    def explain_many(self, pixels_list, sizes=None):
        self.groups.append(len(pixels_list))
        if any((p == 7).all() for p in pixels_list):
            raise RuntimeError("the device failed")
        return [f"explained {p.shape}" for p in pixels_list]

    def explain_pixels(self, pixels, size=None):
        if (pixels == 7).all():
            raise RuntimeError("the device failed on this one")
        return f"alone {pixels.shape}"


def _item(name: str, value: int, side: int = 70) -> Queued:
    image = DecodedImage(name, name * 8, np.full((side, side, 3), value, np.uint8))
    return Queued(IngestOutcome(name, "pending"), image, 0.0)


def test_the_queue_fills_a_batch_and_finds_the_image_at_fault():
    engine = _Engine()
    queue = ExplainQueue(lambda: engine, SETTINGS, batch_size=100)
    per_image = queue.windows_of(_item("a", 1).image)
    assert per_image > 0
    full = [queue.add(_item(n, v)) for n, v in (("a", 1), ("b", 7), ("c", 3))]
    # The batch is full once the queued images' windows reach batch_size.
    assert full == [(k + 1) * per_image >= 100 for k in range(3)]
    assert queue.holds("b" * 8) and not queue.holds("z" * 8)
    done = queue.explain()
    assert len(queue) == 0 and engine.groups == [3]
    assert [d.item.outcome.path for d in done] == ["a", "b", "c"]
    assert done[0].explanation.startswith("alone") and done[2].explanation.startswith("alone")
    assert done[1].explanation is None and done[1].reason == "RuntimeError: the device failed on this one"


def test_a_group_that_works_is_explained_together():
    engine = _Engine()
    queue = ExplainQueue(lambda: engine, SETTINGS, batch_size=10**6)
    for n in "abc":
        queue.add(_item(n, 2))
    assert [d.explanation for d in queue.explain()] == ["explained (70, 70, 3)"] * 3 and engine.groups == [3]
    assert queue.explain() == []


def test_the_plan_skips_files_that_failed_before_without_reading_them(tiny_db_copy, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    con = connect(tiny_db_copy, write=True)
    try:
        plan = IngestPlan(con)
        [(path, future)] = list(plan.decoded([bad]))
        outcome, image = plan.admit(path, future)
        assert image is None and outcome.status == "failed"   # recorded in ingest_failures
        again = IngestPlan(con)
        [(path, future)] = list(again.decoded([bad]))
        assert future is None                                 # not read at all
        outcome, _ = again.admit(path, future)
        assert outcome.status == "skipped" and "--retry-failed" in outcome.reason
        retry = IngestPlan(con, retry_failed=True)
        [(path, future)] = list(retry.decoded([bad]))
        assert isinstance(future, Future)
    finally:
        con.close()
