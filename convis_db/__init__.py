"""convis-db: a DuckDB concept-search database that explains CLIP image embeddings with WordNet.

The method is Concept Visualization (Giulivi & Boracchi, arXiv 2405.14563): every window of an image
is ranked against the definitions of a WordNet noun hierarchy, and the saliency of a concept is the
mean, over the windows that cover a pixel, of the best rank of the concept or any of its descendants.

Use it from Python through `convis_db.open` and `convis_db.create` (see docs/python.md), or from the
shell through the `convis-db` command, which calls the same API.

    >>> import convis_db
    >>> db = convis_db.open("photos.duckdb")                 # doctest: +SKIP
    >>> db.search("dog.n.01", limit=5)                        # doctest: +SKIP
"""

from convis_db.errors import ConvisError

__version__ = "0.1.0"

_API = ("AncestorConcept", "ChildConcept", "Concept", "Concepts", "Database", "DatabaseProfile", "Explanation",
        "ExplanationNode", "ImageRecord", "ImageRecords", "Map", "MapPeak", "Region", "Regions", "Results", "SearchHit",
        "SearchHits", "Settings", "TopConcept", "TopConcepts", "create", "open")
__all__ = ["ConvisError", "__version__", *_API]


def __getattr__(name: str):
    """The API is imported on first use: `import convis_db` stays light (no torch) for the CLI's
    start-up and for tools that only need ConvisError."""
    if name in _API:
        from convis_db import api

        return getattr(api, name)
    raise AttributeError(f"module 'convis_db' has no attribute {name!r}")
