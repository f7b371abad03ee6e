"""skinspark: train and run skin-lesion classifiers (HAM10000) on Spark."""

import importlib.util
import os

__version__ = "0.1.0"

# On TensorFlow >= 2.16, tf.keras is Keras 3 unless this is set, and Keras 3's fit fails under
# MultiWorkerMirroredStrategy (keras-team/keras#20585); with tf-keras installed (the modern stack) it makes
# tf.keras the Keras 2 API that the whole package is written for. TensorFlow 2.15 (the pinned stack, Keras
# 2 built in) would look for tf-keras too, so it is set only where tf-keras is installed. Set here, before
# any module of the package imports TensorFlow, and so inherited by every process the jobs start (Spark's
# Python workers import the package to unpickle its functions).
if importlib.util.find_spec("tf_keras") is not None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
