"""Models loaded once per Python worker process and reused by every task that process runs.

Spark reuses its Python worker processes between tasks (`spark.python.worker.reuse`, on by default),
so a module-level dict in an importable module outlives a task. A model held in a task's closure or
in the submitting script's `__main__` would be pickled with every task and loaded again each time.

TensorFlow sizes its thread pools once, when its runtime starts in a process; `get_model` sets them
to the task's cores (`spark.task.cpus`) before the first load, so concurrent tasks on one executor
do not each spawn a pool as large as the machine.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

# At most this many models stay loaded in one worker: a worker that serves two jobs in turn keeps both
# (an ensemble raises it to its size, `reserve`).
MAX_MODELS = 2
_capacity = MAX_MODELS

_MODELS: dict[tuple[str, str, str], Any] = {}
_LOADS: Counter = Counter()
_LOCK = threading.Lock()


def configure_threads(threads: int) -> bool:
    """Set TensorFlow's intra- and inter-op thread pools to `threads`.

    Returns:
        True when set; False when TensorFlow's runtime had already started in this process (its pools
        can no longer change, and the earlier setting stays).
    """
    import tensorflow as tf

    threads = max(1, int(threads))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        return False
    return True


def get_model(model_dir: str, model_id: str, threads: int = 1, precision: str = "float32") -> Any:
    """The model of `model_dir` computing in `precision`, loaded on this process's first call for
    (model_dir, model_id, precision).

    Args:
        model_dir: a local (or mounted) model directory, as `skinspark.model_dir.load_model` takes it.
        model_id: the directory's content hash; a changed model under the same path is a new entry.
        threads: cores of the calling task; sizes TensorFlow's pools before the process's first load.
        precision: `float32` or `bfloat16` (resolved: see `skinspark.precision.resolve`), whatever
            precision the model was trained in.

    Raises:
        FileNotFoundError: `model_dir` has no model file.
    """
    key = (model_dir, model_id, precision)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            from skinspark.model_dir import TFLiteModel, load_model
            from skinspark.precision import in_precision

            if not _LOADS:
                configure_threads(threads)
            model = load_model(model_dir, threads)
            if not isinstance(model, TFLiteModel):  # a TFLite model computes as it was exported
                model = in_precision(model, precision)
            while len(_MODELS) >= _capacity:
                _MODELS.pop(next(iter(_MODELS)))
            _MODELS[key] = model
            _LOADS[key] += 1
        return model


def reserve(models: int) -> None:
    """Keep room for at least `models` loaded models in this process (all members of an ensemble)."""
    global _capacity
    with _LOCK:
        _capacity = max(_capacity, int(models))


def load_count(model_dir: str, model_id: str, precision: str = "float32") -> int:
    """How many times this process has loaded (model_dir, model_id) in `precision`: 1 once loaded,
    unless evicted."""
    return _LOADS[(model_dir, model_id, precision)]


def clear() -> None:
    """Forget every loaded model and load count (for tests)."""
    with _LOCK:
        _MODELS.clear()
        _LOADS.clear()
