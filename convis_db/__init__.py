"""convis-db: a DuckDB concept-search database that explains CLIP image embeddings with WordNet.

The method is Concept Visualization (Giulivi & Boracchi, arXiv 2405.14563): every window of an image
is ranked against the definitions of a WordNet noun hierarchy, and the saliency of a concept is the
mean, over the windows that cover a pixel, of the best rank of the concept or any of its descendants.
"""

from convis_db.errors import ConvisError

__version__ = "0.1.0"
__all__ = ["ConvisError", "__version__"]
