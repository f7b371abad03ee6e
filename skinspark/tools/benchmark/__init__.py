"""The benchmark: skinspark's paths timed against plain baselines, one module per section.

`ingest`, `train`, `score`, `export`, `archives` and `learning` (also the `learning_precision` section)
each hold one section's measurements; `timing` how they measure and `inputs` what they share (the
page-cached files, the ingested table, a trained model); `run` the sections in order and the JSON
file they are written to (`jobs/benchmark.py`).
"""
