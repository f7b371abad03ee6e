"""Developer tools beside the pipeline: the HAM10000-shaped generator, the demo, the cluster runner and
the benchmark."""
