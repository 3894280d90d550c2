"""The one database profile (convis_db/profile.py): which model and settings a database's
explanations use, what a run asking for other settings gets, and the engine it builds."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

import convis_db
from convis_db.engine.settings import Settings
from convis_db.errors import DatabaseError, UsageError
from convis_db.ingest import Ingestor
from convis_db.profile import read_profile
from convis_db.store.db import connect
from noise_images import write_noise_pngs

CPU = torch.device("cpu")
SETTINGS = Settings(max_pixels=9_000, stride=16, small=32, large=64, top_k=5)


@pytest.fixture(scope="module")
def stored_db(tiny_db, tmp_path_factory):
    folder = tmp_path_factory.mktemp("profile-images")
    write_noise_pngs(folder, [(70, 90)], seed=3)
    db = tmp_path_factory.mktemp("profile") / "stored.duckdb"
    shutil.copyfile(tiny_db, db)
    with Ingestor(db, device=CPU, settings=SETTINGS, batch_size=16) as ing:
        assert ing.run([folder]).count("ingested") == 1
    return db


def _profile(db):
    con = connect(db)
    try:
        return read_profile(con, str(db))
    finally:
        con.close()


def test_an_empty_database_uses_its_model_the_paper_settings_and_cuts_top_k(tiny_db):
    p = _profile(tiny_db)
    assert not p.has_images and p.model["name"] == "tiny-clip" and p.notes() == []
    # The paper's settings and the database's layout; the default top-K cut to |T| (122 synsets here).
    assert p.settings == dataclasses.replace(Settings(), layout=p.layout, top_k=min(100, p.n_synsets))
    assert p.settings_for({"stride": 32}).stride == 32
    with pytest.raises(UsageError, match="unknown settings"):
        p.settings_for({"strides": 32})


def test_stored_settings_win_and_options_complete_from_them(stored_db):
    p = _profile(stored_db)
    assert p.has_images and p.stored_settings == SETTINGS
    assert p.settings == SETTINGS
    # Repeating a stored option is not a change; options left out come from the stored settings.
    assert p.settings_for({"stride": 16, "top_k": None}) == SETTINGS
    assert p.settings_for(SETTINGS) == SETTINGS
    with pytest.raises(DatabaseError, match=r"stride 32 \(stored: 16\)"):
        p.settings_for({"stride": 32})
    with pytest.raises(DatabaseError, match="only comparable under one setting"):
        p.settings_for(Settings())


def test_a_model_the_images_do_not_use_is_refused(stored_db, tmp_path, tiny_config):
    from convis_db.init_db import initialise
    from convis_db.models.registry import resolve_model

    db = tmp_path / "two.duckdb"
    shutil.copyfile(stored_db, db)
    con = connect(db)
    source = con.execute("SELECT source FROM vocabulary").fetchone()[0]
    con.close()
    initialise(db, source, resolve_model(str(tiny_config), "none"), CPU)  # a second model, random weights
    con = connect(db)
    try:
        assert read_profile(con, str(db)).model_id == 1   # the stored images' model, not the newest
        with pytest.raises(DatabaseError, match="one database holds one model's explanations"):
            read_profile(con, str(db), model=str(tiny_config), pretrained="none")
    finally:
        con.close()
    con = connect(stored_db)  # a model never embedded there (a local config: nothing is downloaded)
    try:
        with pytest.raises(DatabaseError, match="is not in"):
            read_profile(con, str(stored_db), model=str(tiny_config), pretrained="none")
    finally:
        con.close()


def test_the_profile_equals_the_database_profile_view(stored_db):
    con = connect(stored_db)
    try:
        p = read_profile(con, str(stored_db))
        row = dict(zip([d[0] for d in con.execute("SELECT * FROM database_profile").description],
                       con.execute("SELECT * FROM database_profile").fetchone()))
    finally:
        con.close()
    assert (row["model_id"], row["model"], row["pretrained"]) == (p.model_id, p.model["name"], p.model["pretrained"])
    assert {k: row[k] for k in ("max_pixels", "stride", "small", "large", "top_k", "layout")} == p.settings.as_dict()
    assert (row["embeddings"], row["n_synsets"]) == (p.embeddings, p.n_synsets)


def test_the_engine_is_built_once_here_with_the_device_batch_default(stored_db):
    from convis_db.engine.explainer import default_batch_size

    with convis_db.open(stored_db, device="cpu") as db:
        engine = db.profile.build_engine(db.con, db.device)
        assert engine.settings == SETTINGS and engine.batch_size == default_batch_size(CPU)
        assert engine.n == db.profile.n_synsets
        # The map service and eval use this same builder: their engine has the database's settings.
        assert db.map_service().engine().settings == SETTINGS
