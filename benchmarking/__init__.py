"""
The quality benchmark: inject known hardness into clones of a dataset,
score them with every method, and report how well each finds it.

- :mod:`~fiftyone_hardness.benchmarking.perturbations`: image and vector
  perturbations (arrays),
- :mod:`~fiftyone_hardness.benchmarking.injection`: injecting hardness
  into a clone (label noise from
  :mod:`fiftyone_hardness.methods.label_noise`, images, vectors),
- :mod:`~fiftyone_hardness.benchmarking.metrics`: AUROC, AUPRC, flag
  precision/recall, precision@k, noise-rate error, stability (arrays),
- :mod:`~fiftyone_hardness.benchmarking.evaluation`: those metrics for runs
  on a clone,
- :mod:`~fiftyone_hardness.benchmarking.grid`: the grid of settings
  (``python -m fiftyone_hardness.benchmarking``),
- :mod:`~fiftyone_hardness.benchmarking.report`: tables, plots, markdown.

Speed measurements are elsewhere: ``speed/``.
"""
