"""Epoch checkpoints in MODEL_DIR/checkpoints: written whole by rank 0, found and restored by `--resume`."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import tensorflow as tf

from skinspark.manifest import staged

CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "ckpt"
STATE_FILE = "state.json"


def latest_checkpoint(checkpoint_dir: str | Path) -> tuple[int, Path, dict] | None:
    """(epoch, directory, state) of the newest complete checkpoint, or None."""
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        return None
    found = []
    for path in directory.glob("epoch-*"):
        state_file = path / STATE_FILE
        if path.is_dir() and state_file.is_file():
            state = json.loads(state_file.read_text())
            found.append((int(state["epoch"]), path, state))
    return max(found, key=lambda item: item[0]) if found else None


def write_checkpoint(
    checkpoint_dir: str | Path, epoch: int, model, optimizer, history: list[dict], keep: int = 2
) -> Path:
    """Write weights, optimizer state and history after `epoch` (1-based) as `epoch-NNNN/`.

    The files go to a temporary directory that is renamed when complete, so a kill never leaves a
    directory that `latest_checkpoint` would take for a finished epoch. Older checkpoints beyond the
    newest `keep` are removed.
    """
    directory = Path(checkpoint_dir)
    final = directory / f"epoch-{epoch:04d}"
    # Renamed only when complete (replacing the same epoch trained again after an older resume).
    with staged(final) as temporary:
        temporary.mkdir(parents=True)
        tf.train.Checkpoint(model=model, optimizer=optimizer).write(str(temporary / CHECKPOINT_PREFIX))
        state = {"epoch": epoch, "history": history, "written": time.time()}
        (temporary / STATE_FILE).write_text(json.dumps(state, indent=2))
    complete = sorted(path for path in directory.glob("epoch-*") if (path / STATE_FILE).is_file())
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in directory.glob(".epoch-*.tmp-*"):  # left by a rank that was killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    return final


def restore_checkpoint(path: str | Path, model, optimizer=None) -> dict:
    """Load a checkpoint written by `write_checkpoint` into `model` (and a built `optimizer`, if given).

    Returns:
        The checkpoint's state: {"epoch", "history", "written"}.
    """
    path = Path(path)
    if optimizer is None:
        tf.train.Checkpoint(model=model).read(str(path / CHECKPOINT_PREFIX)).expect_partial()
    else:
        status = tf.train.Checkpoint(model=model, optimizer=optimizer).read(str(path / CHECKPOINT_PREFIX))
        status.assert_existing_objects_matched()
    return json.loads((path / STATE_FILE).read_text())
