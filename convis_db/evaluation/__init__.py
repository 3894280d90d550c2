"""Evaluation harness for the paper's experiments.

* `wsol`: weakly supervised object localisation, MaxBoxAcc (Choe et al., CVPR 2020) on the CUB-200-2011
  layout or a COCO-format annotation file (the paper's Table II);
* `ood`: out-of-distribution detection AUROC on ImageNet-layout folders, ConVis scores against a CLIP
  image-to-image baseline (the paper's Table I);
* `metrics`: AUROC (Mann-Whitney), boxes from thresholded maps, IoU;
* `datasets`: readers of the three layouts;
* `explainers`: the saliency sources being evaluated (Concept Visualization, Grad-ECLIP), each usable
  with a database's model or with an injected engine/model (tests use a toy colour encoder).

The library never prints; the `convis-db eval` command formats the reports.
"""
