"""The jobs' entry points, each written once: a module per job with its `args_parser()` and
`main(argv=None)`. The console scripts (`skinspark-ingest`, ...) call them, `jobs/<job>.py` hands over to
them under spark-submit, and each module also runs as a script (`spark-submit
skinspark/entry/<job>.py`, what `skinspark-cluster` submits), so an installed wheel needs no `jobs/`."""
