"""Classification metrics and plots shared by training (test split) and scoring (labelled archives).

Everything is computed with scikit-learn from integer labels and predicted probabilities. The
dataset is imbalanced (nv is two thirds of HAM10000), so balanced accuracy (mean per-class recall,
the ISIC 2018 Task 3 metric) and macro F1 are reported beside plain accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from skinspark import schema


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_prob: np.ndarray,
    labels: Sequence[str] = schema.LABELS,
) -> dict[str, Any]:
    """Metrics of predicted class probabilities against true label indices.

    Args:
        y_true: true label indices (into `labels`), shape (n,).
        y_prob: predicted probabilities, shape (n, len(labels)); the prediction is the arg-max.
        labels: label names in output-unit order.

    Returns:
        A JSON-ready dict: `images`, `accuracy`, `balanced_accuracy` (mean recall over the classes
        present in y_true), `macro_f1` (over the classes present in y_true or predicted), `loss`
        (categorical cross-entropy), `per_class` ({label: precision, recall, f1, support} for every
        label; 0.0 where undefined), `confusion_matrix` (rows true, columns predicted, every label)
        and `labels`.

    Raises:
        ValueError: empty input, mismatched lengths, a wrong probability width or a label index out of range.
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    n_labels = len(labels)
    if y_true.size == 0:
        raise ValueError("no examples to evaluate")
    if y_prob.ndim != 2 or y_prob.shape != (y_true.size, n_labels):
        raise ValueError(f"y_prob must have shape ({y_true.size}, {n_labels}), got {y_prob.shape}")
    if y_true.min() < 0 or y_true.max() >= n_labels:
        raise ValueError(f"label indices must be in [0, {n_labels}), got {y_true.min()}..{y_true.max()}")
    y_pred = y_prob.argmax(axis=1)
    indices = list(range(n_labels))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=indices, zero_division=0
    )
    # Softmax output sums to 1 only up to float32 rounding; log_loss wants it exact.
    probabilities = np.clip(y_prob, 1e-15, None)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return {
        "images": int(y_true.size),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "macro_f1": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "loss": float(skm.log_loss(y_true, probabilities, labels=indices)),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=indices).tolist(),
        "labels": list(labels),
    }


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # Mean recall over the classes that occur in y_true. sklearn's balanced_accuracy_score computes the
    # same but warns when a prediction names a class absent from y_true (common on a small test split).
    present = np.unique(y_true)
    recalls = skm.recall_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    return float(np.mean(recalls))


def summary(metrics: dict[str, Any]) -> str:
    """A one-screen, human-readable table of `classification_metrics` output."""
    lines = [
        f"{metrics['images']} images: accuracy {metrics['accuracy']:.4f}, "
        f"balanced accuracy {metrics['balanced_accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
        f"loss {metrics['loss']:.4f}",
        f"  {'class':<6} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}",
    ]
    for label, row in metrics["per_class"].items():
        lines.append(
            f"  {label:<6} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>7.3f} "
            f"{row['support']:>8d}"
        )
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster or in tests
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]] | np.ndarray,
    labels: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix (test split)",
) -> None:
    """Save a confusion matrix as a PNG: counts in each cell, colour by the share of the true class."""
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    figure, axes = plt.subplots(figsize=(6.5, 5.5))
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="share of true class")
    axes.set_xticks(range(len(labels)), labels=labels, rotation=45)
    axes.set_yticks(range(len(labels)), labels=labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            colour = "white" if shares[i, j] > 0.5 else "black"
            axes.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_training_curves(history_df: pd.DataFrame, path: str | Path) -> None:
    """Save accuracy and loss per epoch, training and validation side by side (the paper's figures
    6.8 and 6.9) as a PNG. `history_df` needs columns epoch, accuracy, val_accuracy, loss, val_loss."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for axes, metric in ((left, "accuracy"), (right, "loss")):
        axes.plot(history_df["epoch"], history_df[metric], marker="o", label=f"training {metric}")
        axes.plot(history_df["epoch"], history_df[f"val_{metric}"], marker="o", label=f"validation {metric}")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(f"Model {metric}")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
