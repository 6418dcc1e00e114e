"""
The FiftyOne layer: the one place that reads from and writes to FiftyOne.

- :mod:`~fiftyone_hardness.dataset_io.data`: labelled data out of a
  collection, as arrays,
- :mod:`~fiftyone_hardness.dataset_io.runs`: the run classes, and writing a
  method's fields and registering its run,
- :mod:`~fiftyone_hardness.dataset_io.run_views`: views, figures and tables
  of a run (what the panel and the run operators show),
- :mod:`~fiftyone_hardness.dataset_io.review`: review verdicts and label
  corrections; :mod:`~fiftyone_hardness.dataset_io.counterexamples`,
- :mod:`~fiftyone_hardness.dataset_io.embeddings`: computing and storing
  image embeddings.

Everything under :mod:`fiftyone_hardness.methods` works on arrays and never
imports FiftyOne.
"""
