"""Saliency methods other than Concept Visualization, for comparison on the same data.

grad_eclip: Grad-ECLIP (Zhao et al., ICML 2024), a gradient-based map of an image-text cosine for
open_clip ViT models.
"""
