"""skinspark: train and run skin-lesion classifiers (HAM10000) on Spark."""

__version__ = "0.1.0"
