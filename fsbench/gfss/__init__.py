"""Generalized few-shot segmentation (``--task gfss``): every query segmented into base and novel classes
at once, base (in-vocabulary) classes by the trained model, novel (out-of-vocabulary) classes from K
support examples each, scored by mIoU over all classes, the base classes, the novel classes and their
harmonic mean.

The protocol follows GFS-Seg (Tian et al., "Generalized Few-shot Semantic Segmentation", CVPR 2022,
dvlab-research/GFS-Seg): every evaluation image is a query; one support set of K training images per
novel class, each showing that novel class and no other where possible, is drawn per seed and shared
by all queries; intersections and unions are summed per class over all queries; background is a base
class where the dataset has one. What differs is listed in README.md (Generalized FSS).

task.py: classes, queries and supports; vocabulary.py: predictions over a class vocabulary;
scores.py: the counts and scores; evaluate.py: the loop; training_view.py: the upper bound's data;
run.py: one run; table.py: the tables.
"""
