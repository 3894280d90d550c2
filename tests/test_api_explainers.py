"""The explainers through the Database API (issue 22): `db.mutual` on a writable database uses its own
connection, takes stored ids, comma-separated labels and stores on request; `db.map(..., method="grad-eclip")`
returns a drawable map; `db.explain_text` is tested in test_grad_eclip_text.py."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pytest
from PIL import Image

import convis_db
from convis_db.engine.images import read_image
from convis_db.errors import ConvisError, UsageError
from convis_db.explainers import grad_eclip as ge


def _photo(path, seed=3, size=(48, 64)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def ingested(tiny_db, tmp_path_factory):
    """The tiny database with one ingested photo (built once; tests work on copies)."""
    folder = tmp_path_factory.mktemp("api-explainers")
    path = folder / "ingested.duckdb"
    shutil.copyfile(tiny_db, path)
    photo = _photo(folder / "photo.png")
    with convis_db.open(path, device="cpu", write=True) as db:
        assert db.ingest(photo).count("ingested") == 1
    return path, photo


@pytest.fixture
def writable(ingested, tmp_path):
    """A private copy of `ingested`, opened for writing (closed after the test)."""
    source, photo = ingested
    path = tmp_path / "w.duckdb"
    shutil.copyfile(source, path)
    db = convis_db.open(path, device="cpu", write=True)
    yield db, photo
    db.close()


def test_mutual_on_a_writable_database_uses_its_connection(writable):
    db, photo = writable
    con = db.con
    exp = db.mutual(photo, ["dog", "cat", "pizza"])
    assert exp.predicted in ("dog", "cat", "pizza") and db.con is con
    # the handle still works afterwards: reads and a write
    assert db.images()[0].image_id == 1 and len(db.search("dog.n.01")) == 1
    assert db.ingest(photo).count("skipped") == 1
    stored = db.mutual(1, ["dog", "cat", "pizza"])
    assert stored.sha256 and stored.image_path == exp.image_path
    assert [t.entry for t in stored.mutual_concepts] == [t.entry for t in exp.mutual_concepts]
    from convis_db.mutual import explain_image

    again = explain_image(photo, ["dog", "cat", "pizza"], db=db)   # the notebook helper, through the Database
    assert [t.entry for t in again.vision_concepts] == [t.entry for t in exp.vision_concepts]


def test_mutual_labels_as_a_string_list_or_nothing(writable):
    db, photo = writable
    exp = db.mutual(photo, "pizza, car")
    assert exp.labels == ["pizza", "car"]
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    assert db.mutual(pixels, ("pizza", "car")).class_cosines == pytest.approx(exp.class_cosines, abs=1e-6)
    for labels, message in (([], "labels is empty"), ("", "at least two"), ("pizza", "at least two"),
                            (["pizza", 3], "must be strings"), (42, "list of class names"),
                            ("pizza,pizza", "duplicate")):
        with pytest.raises(ConvisError, match=message):
            db.mutual(photo, labels)
    with pytest.raises(UsageError, match="no option colour"):
        db.mutual(photo, "pizza,car", colour="red")
    with pytest.raises(UsageError, match=r"\(height, width, 3\) uint8"):
        db.mutual(np.zeros((10, 10)), "pizza,car")
    with pytest.raises(ConvisError, match="nothere.jpg: the file does not exist"):
        db.mutual("nothere.jpg", "pizza,car")
    few = db.mutual(photo, "pizza,car", n_concepts=2, decomposition="kmeans")
    assert few.settings.n_concepts == 2 and few.settings.decomposition == "kmeans"


def test_mutual_store(writable, tmp_path):
    db, photo = writable
    exp = db.mutual(1, "pizza,car,dog", store=True)
    assert exp.explanation_id is not None and exp.as_dict()["explanation_id"] == exp.explanation_id
    row = db.sql("SELECT image_id, predicted, n_mutual FROM mutual_explanations WHERE explanation_id = ?",
                 [exp.explanation_id]).fetchall()
    assert row == [(1, exp.predicted, len(exp.mutual_concepts))]
    assert db.mutual(1, "pizza,car").explanation_id is None        # nothing stored unless asked
    explainer = db.mutual_explainer(["pizza", "car", "dog"])       # one explainer for many images (the CLI's eval)
    again = explainer.explain(read_image(db.image_file(1)).pixels)
    assert again.predicted == exp.predicted
    assert db.store_mutual(again, explainer) not in (None, exp.explanation_id)
    path = db.path
    db.close()
    with convis_db.open(path, device="cpu") as ro:
        with pytest.raises(UsageError, match="write=True"):
            ro.mutual(1, "pizza,car", store=True)
        assert ro.mutual(1, "pizza,car").predicted in ("pizza", "car")    # explaining needs no writer
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM mutual_explanations").fetchone()[0] == 2
    finally:
        con.close()


def test_map_grad_eclip_is_a_drawable_map(writable, tiny_spec):
    from convis_db.models.clip import load_model

    db, photo = writable
    m = db.map(photo, text="a photo of a dog", method="grad-eclip")
    assert isinstance(m, convis_db.api.TextMap) and m.source == "grad-eclip"
    assert m.values.shape == (48, 64) and 0 <= m.values.min() and m.values.max() <= 1
    png = m.to_png(photo.parent / "ge.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (photo.parent / "ge.png").read_bytes() == png
    assert Image.open(photo.parent / "ge.png").size == (64, 48)
    direct = ge.grad_eclip(load_model(tiny_spec, db.device), np.asarray(Image.open(photo).convert("RGB")),
                           ge.text_embedding(load_model(tiny_spec, db.device), "a photo of a dog"))
    np.testing.assert_allclose(m.values, direct.saliency, atol=1e-5)
    assert m.cosine == pytest.approx(direct.cosine, abs=1e-6) and m.text == "a photo of a dog"
    stored = db.map(1, "dog.n.01", method="grad-eclip")
    assert stored.image_id == 1 and stored.synset == "dog.n.01" and "domesticated" in stored.text
    assert len(repr(stored)) < 250 and stored._repr_png_()[:4] == b"\x89PNG"
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    np.testing.assert_allclose(db.map(pixels, text="a photo of a dog", method="grad-eclip").values, m.values, atol=1e-6)
    for kwargs, message in ((dict(method="grad-eclip"), "needs a text"),
                            (dict(concept="dog.n.01", method="grad-eclip", text="a dog"), "not both"),
                            (dict(concept="dog.n.01", method="grad-eclip", only_self=True), "only_self"),
                            (dict(concept="dog.n.01", method="gradcam"), "grad-eclip"),
                            (dict(concept="dog.n.01", text="a dog"), "method='grad-eclip'"),
                            (dict(), "needs the concept")):
        with pytest.raises(UsageError, match=message):
            db.map(photo, **kwargs)
    assert db.map(1, "dog.n.01").source == "database"       # the convis map is unchanged
