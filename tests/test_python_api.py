"""The public Python API: docs/python.md runs as written (with a tiny model), and the API's answers
equal those of the library functions the CLI prints."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import convis_db
from convis_db.errors import UsageError

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def _doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


#: What the documentation names, and what the test runs instead: the test suite never asks for
#: pretrained weights (none can be downloaded), so each name must be there to be swapped.
_DOC_MODEL = 'model="ViT-B-32", pretrained="openai"'
_DOC_VOCAB = 'vocab="physical-objects"'


def _offline(block: str, tiny_config, tiny_checkpoint, small_vocab_file) -> str:
    """The doc block with the tiny local model and the small vocabulary in place of ViT-B-32/openai."""
    if "convis_db.create(" in block:
        assert _DOC_MODEL in block and _DOC_VOCAB in block, "docs/python.md's create() call changed: update the test"
    assert "pretrained=" not in block.replace(_DOC_MODEL, ""), "a doc block names other weights: swap them here"
    return (block.replace(_DOC_MODEL, f"model={str(tiny_config)!r}, pretrained={str(tiny_checkpoint)!r}")
            .replace(_DOC_VOCAB, f"vocab={str(small_vocab_file)!r}"))


@pytest.fixture(scope="module")
def notebook(tmp_path_factory, tiny_config, tiny_checkpoint, small_vocab_file):
    """Run the doc's blocks in order, in one namespace, with the tiny model and vocabulary."""
    import os

    folder = tmp_path_factory.mktemp("notebook")
    here = os.getcwd()
    os.chdir(folder)
    namespace: dict = {}
    try:
        for block in _doc_blocks():
            code = _offline(block, tiny_config, tiny_checkpoint, small_vocab_file)
            exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the documentation's own code
    finally:
        os.chdir(here)
    return folder, namespace


def test_the_documented_session_runs(notebook):
    folder, ns = notebook
    assert ns["report"].count("ingested") == 4
    assert ns["hits"] and ns["best"].score == ns["hits"][0].score
    assert (folder / "entity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and ns["png"] == (folder / "entity.png").read_bytes()
    assert ns["m"]._repr_png_()[:4] == b"\x89PNG"
    assert list(ns["frame"].columns) == ["name", "images"]
    assert ns["profile"].has_images and ns["profile"].settings.stride == 32 and ns["profile"].notes() == []  # local weights
    assert (folder / "labels.csv").is_file()
    assert ns["table"].num_rows == len(ns["hits"]) and list(ns["hits_frame"]["image_id"]) == [h.image_id for h in ns["hits"]]
    assert ns["tops"] and ns["tops"][0].self_score >= ns["tops"][-1].self_score
    assert ns["m"].peak.x < ns["m"].size[0] and ns["m"].peak.work_x < ns["m"].work_size[0]
    assert isinstance(ns["refused"], convis_db.errors.DatabaseLockedError) and "already open" in str(ns["refused"])
    assert isinstance(ns["closed"], convis_db.errors.DatabaseClosedError) and ns["db"].closed
    assert sum(w.weight for w in ns["words"].words) == pytest.approx(1.0) and ns["exp"].labels == ["dog", "cat", "pizza"]
    assert (folder / "dog-grad-eclip.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(_doc_blocks()) == 10


def test_api_answers_equal_the_library_functions(notebook):
    from convis_db.query.concepts import find_concepts
    from convis_db.query.explain import explain_image
    from convis_db.query.search import search_images

    folder, _ = notebook
    with convis_db.open(folder / "notebook.duckdb", device="cpu") as db:
        hits = db.search("entity.n.01", limit=10)
        assert [h.__dict__ for h in hits] == search_images(db.con, "entity.n.01", limit=10)
        tree = db.explain(hits[0].image_id, depth=3, top=2).tree
        raw = explain_image(db.con, str(hits[0].image_id), depth=3, top=2)["tree"]
        assert [n.synset for n in tree.walk()] == _names(raw)
        assert [c.synset for c in db.concepts("dog")] == [r["synset"] for r in find_concepts(db.con, "dog")]
        from convis_db.query.concepts import concept_ancestors, concept_children

        assert [c.__dict__ for c in db.children("entity.n.01")] == concept_children(db.con, "entity.n.01")
        assert [a.__dict__ for a in db.ancestors("dog.n.01")] == concept_ancestors(db.con, "dog.n.01")
        assert hits.by in ("image", "map") and isinstance(hits.notes, list)
        assert db.explain(hits[0].image_id, depth=1).as_dict()["tree"]["synset"] == "entity.n.01"
        m = db.map(hits[0].image_id, "entity.n.01")
        assert m.source == "database" and m.peak["score"] == pytest.approx(hits[0].score, abs=1e-12)
        assert m.values.dtype == np.float64 and m.overlay().dtype == np.uint8
        assert db.sql("SELECT count(*) FROM images").fetchall()[0][0] == len(db.images()) == 4


def _names(node: dict) -> list[str]:
    return [node["synset"], *[n for c in node.get("children", []) for n in _names(c)]]


def test_read_only_database_refuses_ingest_and_writes(notebook, tmp_path):
    folder, _ = notebook
    db = convis_db.open(folder / "notebook.duckdb", device="cpu")
    try:
        with pytest.raises(UsageError, match="write=True"):
            db.ingest(tmp_path)
        with pytest.raises(UsageError, match=r"open read-only: open it with convis_db.open\(path, write=True\)"):
            db.sql("DELETE FROM images").fetchall()
        with pytest.raises(UsageError):
            db.sql(f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'").fetchall()
        assert not (tmp_path / "x.csv").exists()
    finally:
        db.close()


def test_open_missing_file_is_a_convis_error(tmp_path):
    with pytest.raises(convis_db.ConvisError, match="no database at"):
        convis_db.open(tmp_path / "absent.duckdb")


def test_every_public_name_has_a_docstring_with_an_example():
    for name in convis_db.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(convis_db, name)
        doc = inspect.getdoc(obj) or ""
        assert doc, name
        if callable(obj) and not isinstance(obj, type) or name in ("Database", "Map"):
            assert ">>>" in doc or "Example" in doc or "notebook" in doc, name


def test_precision_is_resolved_once_like_the_cli(notebook, monkeypatch):
    from convis_db.models import precision as precision_mod

    folder, _ = notebook
    with convis_db.open(folder / "notebook.duckdb", device="cpu") as db:
        assert db.precision == "fp32"
    monkeypatch.setattr(precision_mod, "cpu_has_native", lambda precision: False)
    with pytest.raises(UsageError, match="precision='bf16' on this CPU"):  # refused where the CPU has no bf16 kernels
        convis_db.open(folder / "notebook.duckdb", device="cpu", precision="bf16")
    monkeypatch.setattr(precision_mod, "cpu_has_native", lambda precision: True)
    with convis_db.open(folder / "notebook.duckdb", device="cpu", precision="bf16") as db:
        assert db.precision == "bf16" and "bf16" in repr(db)
    with pytest.raises(UsageError, match="precision='fp64' is not one of"):
        convis_db.open(folder / "notebook.duckdb", device="cpu", precision="fp64")


def test_mutual_knowledge_through_the_database(notebook):
    from convis_db.paths import sample_images_dir

    folder, _ = notebook
    image = sorted(sample_images_dir().glob("*.png"))[0]
    with convis_db.open(folder / "notebook.duckdb", device="cpu") as db:
        exp = db.mutual(image, ["dog", "cat", "pizza"])
    assert exp.predicted in ("dog", "cat", "pizza")
    assert exp.as_dict()["predicted"] == exp.predicted
