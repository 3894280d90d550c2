"""Mutual-knowledge explanations of CLIP's zero-shot predictions (Sammani & Deligiannis, NeurIPS 2024).

Which textual concepts do CLIP's vision and language encoders share when the model gives an image a
class? The vision side: the image's patch tokens decomposed into visual concepts (regions), each
described with texts of a bank; the language side: the bank's texts around the predicted class; the
mutual concepts are on both sides, and their mutual information (and its dynamics) measures how much
the two encoders share. docs/mutual.md describes the method and the choices made here.

    >>> from convis_db.mutual import explain_image
    >>> exp = explain_image("photo.jpg", ["cat", "dog", "car"], db="convis.duckdb")
"""

from convis_db.mutual.bank import ConceptBank, definitions_bank, descriptor_bank
from convis_db.mutual.explain import MutualExplainer, MutualExplanation, TextualConcept, VisualConcept
from convis_db.mutual.service import explain_image, explainer_for_database
from convis_db.mutual.settings import DEFAULT_TEMPLATE, MutualSettings

__all__ = ["ConceptBank", "DEFAULT_TEMPLATE", "MutualExplainer", "MutualExplanation", "MutualSettings",
           "TextualConcept", "VisualConcept", "definitions_bank", "descriptor_bank", "explain_image",
           "explainer_for_database"]
