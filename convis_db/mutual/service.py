"""The method against a database: its model (the one its images were ingested with) and its bank."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import torch

from convis_db.mutual.bank import definitions_bank, descriptor_bank
from convis_db.mutual.explain import MutualExplainer
from convis_db.mutual.settings import DEFAULT_TEMPLATE, MutualSettings


def explainer_for_database(con: duckdb.DuckDBPyConnection, device: torch.device, labels: Sequence[str],
                           templates: Sequence[str] = (DEFAULT_TEMPLATE,), settings: MutualSettings | None = None,
                           descriptors: str | Path | None = None, store_bank: bool = False,
                           model=None, progress=None) -> tuple[MutualExplainer, int]:
    """(explainer, model_id). The model is refused (ModelError) before any text is embedded when it has
    no patch tokens. `store_bank` writes a new descriptor bank (needs a connection opened for writing)."""
    from convis_db.mutual.patches import check_supported
    from convis_db.profile import read_profile

    profile = read_profile(con)
    model_id = profile.model_id
    if model is None:
        model = profile.load_model(device)
    check_supported(model)
    from convis_db.progress import no_progress

    bank = (descriptor_bank(con, model, model_id, descriptors, store=store_bank, progress=progress or no_progress)
            if descriptors
            else definitions_bank(con, model_id))
    return MutualExplainer(model, bank, labels, templates, settings), model_id


def explain_image(image, labels: Sequence[str], *, db: str | Path | None = None, model=None, bank=None,
                  descriptors: str | Path | None = None, templates: Sequence[str] = (DEFAULT_TEMPLATE,),
                  settings: MutualSettings | None = None, device: str | torch.device | None = None,
                  faithfulness: bool = False):
    """Explain CLIP's zero-shot prediction of `image` over `labels` (for notebooks).

    image: a file path or an (H, W, 3) uint8 array. Either `db` (a convis-db database file, or an open
    convis_db.Database, whose own connection is then used: its model and the definitions of T, or
    `descriptors`, a JSON descriptor file embedded on the fly), or `model` (a
    LoadedModel) with `bank` (a ConceptBank). Returns a MutualExplanation (dataclasses; `.as_dict()`).

        >>> from convis_db.mutual import explain_image
        >>> exp = explain_image("cat.jpg", ["cat", "dog"], db="convis.duckdb")
        >>> exp.predicted, [t.text for t in exp.mutual_concepts]
    """
    import numpy as np

    from convis_db.errors import UsageError
    from convis_db.models.device import resolve_device

    if hasattr(db, "mutual") and hasattr(db, "con"):   # a convis_db.Database: its own connection and model
        return db.mutual(image, labels, descriptors=descriptors,  # type: ignore[union-attr]
                         templates=templates, settings=settings, faithfulness=faithfulness)
    if isinstance(device, str) or device is None:
        device = resolve_device(device or "auto")
    if db is not None:
        from convis_db.store.db import connect, require_initialised

        con = connect(db)
        try:
            require_initialised(con, db)
            explainer, _ = explainer_for_database(con, device, labels, templates, settings, descriptors, model=model)
        finally:
            con.close()
    elif model is not None and bank is not None:
        explainer = MutualExplainer(model, bank, labels, templates, settings)
    else:
        raise UsageError("explain_image needs db=PATH, or model= and bank= (a LoadedModel and a ConceptBank).")
    if isinstance(image, np.ndarray):
        return explainer.explain(image, faithfulness=faithfulness)
    return explainer.explain_file(str(image), faithfulness=faithfulness)
