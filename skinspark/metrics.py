"""Classification metrics and plots shared by training (test split) and scoring (labelled archives).

Everything is computed with scikit-learn from integer labels and predicted probabilities. The
dataset is imbalanced (nv is two thirds of HAM10000), so balanced accuracy (mean per-class recall,
the ISIC 2018 Task 3 metric) and macro F1 are reported beside plain accuracy, and with them what a
dermatology reader asks next: per-class one-vs-rest ROC AUC and average precision, melanoma
sensitivity and specificity (at the arg-max and at a threshold fixed on the validation split), and
calibration (expected calibration error over equal-width confidence bins, with a reliability diagram).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from skinspark import schema

MELANOMA = "mel"
MALIGNANT = "malignant"
# The class whose sensitivity a reader asks for first, by the label it has among a task's output units,
# and the key of its operating point in the metrics: melanoma among the diagnoses, malignant in the
# benign/malignant task.
OPERATING_POINTS: dict[str, str] = {MELANOMA: "melanoma", MALIGNANT: "malignant"}
TARGET_SENSITIVITY = 0.80  # the operating point fixed on the validation split
CALIBRATION_BINS = 15


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_prob: np.ndarray,
    labels: Sequence[str] = schema.LABELS,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Metrics of predicted class probabilities against true label indices.

    Args:
        y_true: true label indices (into `labels`), shape (n,).
        y_prob: predicted probabilities, shape (n, len(labels)); the prediction is the arg-max.
        labels: label names in output-unit order (a task's: the seven diagnoses, or benign/malignant).
        threshold: the operating point on P(mel), or on P(malignant), fixed on a validation split
            (`operating_threshold`); None: the arg-max only.

    Returns:
        A JSON-ready dict: `images`, `accuracy`, `balanced_accuracy` (mean recall over the classes
        present in y_true), `macro_f1` (over the classes present in y_true or predicted), `loss`
        (categorical cross-entropy), `per_class` ({label: precision, recall, f1, support} for every
        label; 0.0 where undefined), `confusion_matrix` (rows true, columns predicted, every label)
        and `labels`; `roc_auc` and `average_precision` ({label: one-vs-rest value, None for a label
        absent from y_true or present everywhere}), `macro_auc` (mean over the defined ones),
        `melanoma` (sensitivity and specificity at the arg-max, and at `threshold` on P(mel) when
        given; None where "mel" is not a label), `malignant` (the benign/malignant task's binary
        figures: the same two operating points on P(malignant), with the malignant class's F1, ROC AUC
        and average precision; None where "malignant" is not a label) and `calibration`
        (`calibration`'s output).

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
        **ranking_metrics(y_true, probabilities, labels),
        **{
            key: operating_point_metrics(y_true, probabilities, labels, positive, threshold)
            if positive in labels
            else None
            for positive, key in OPERATING_POINTS.items()
        },
        "calibration": calibration(y_true, probabilities),
    }


def ranking_metrics(y_true: np.ndarray, y_prob: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """One-vs-rest ROC AUC and average precision per label, and their macro means (scikit-learn)."""
    auc, precision = {}, {}
    for index, label in enumerate(labels):
        positive = y_true == index
        defined = 0 < positive.sum() < positive.size
        auc[label] = float(skm.roc_auc_score(positive, y_prob[:, index])) if defined else None
        precision[label] = float(skm.average_precision_score(positive, y_prob[:, index])) if defined else None
    defined_auc = [value for value in auc.values() if value is not None]
    defined_ap = [value for value in precision.values() if value is not None]
    return {
        "roc_auc": auc,
        "average_precision": precision,
        "macro_auc": float(np.mean(defined_auc)) if defined_auc else None,
        "macro_average_precision": float(np.mean(defined_ap)) if defined_ap else None,
    }


def positive_label(labels: Sequence[str]) -> str | None:
    """The label whose operating point is reported ("mel" or "malignant"), or None for other labels."""
    return next((label for label in OPERATING_POINTS if label in labels), None)


def operating_threshold(
    y_true: Sequence[int] | np.ndarray,
    y_prob: np.ndarray,
    labels: Sequence[str] = schema.LABELS,
    sensitivity: float = TARGET_SENSITIVITY,
) -> float | None:
    """The highest threshold on P(mel) (or P(malignant), `positive_label`) whose sensitivity for that
    class is at least `sensitivity` (from scikit-learn's ROC curve), fixed on a validation split and
    then applied to test or scored data; None when the split holds none of that class or nothing else,
    or the labels have no such class."""
    y_true = np.asarray(y_true).reshape(-1)
    positive_name = positive_label(labels)
    if positive_name is None:
        return None
    index = list(labels).index(positive_name)
    positive = y_true == index
    if not 0 < positive.sum() < positive.size:
        return None
    # Every threshold, not the ROC's corners only: a dropped one may be the highest that reaches it.
    _, true_positive_rate, thresholds = skm.roc_curve(
        positive, np.asarray(y_prob)[:, index], drop_intermediate=False
    )
    reached = np.flatnonzero(true_positive_rate >= sensitivity)
    return float(min(thresholds[reached[0]], 1.0))


def operating_point_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, labels: Sequence[str], positive_name: str, threshold: float | None
) -> dict[str, Any]:
    """One class against the rest: sensitivity and specificity at the arg-max, and at `threshold` on
    its probability (flagged when P >= threshold) when one is given. For the benign/malignant task
    also the malignant class's F1 (at the arg-max), ROC AUC and average precision."""
    index = list(labels).index(positive_name)
    positive = y_true == index
    result: dict[str, Any] = {"at_argmax": _sensitivity_specificity(positive, y_prob.argmax(axis=1) == index)}
    if threshold is not None:
        flagged = y_prob[:, index] >= threshold
        result["at_threshold"] = {
            "threshold": float(threshold),
            **_sensitivity_specificity(positive, flagged),
        }
    if positive_name == MALIGNANT:
        defined = 0 < positive.sum() < positive.size
        result["f1"] = float(skm.f1_score(positive, y_prob.argmax(axis=1) == index, zero_division=0))
        result["roc_auc"] = float(skm.roc_auc_score(positive, y_prob[:, index])) if defined else None
        result["average_precision"] = (
            float(skm.average_precision_score(positive, y_prob[:, index])) if defined else None
        )
    return result


def _sensitivity_specificity(positive: np.ndarray, flagged: np.ndarray) -> dict[str, float | None]:
    positives, negatives = int(positive.sum()), int((~positive).sum())
    return {
        "sensitivity": float((flagged & positive).sum() / positives) if positives else None,
        "specificity": float((~flagged & ~positive).sum() / negatives) if negatives else None,
    }


def calibration(y_true: np.ndarray, y_prob: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Expected calibration error of the top-class confidence over `bins` equal-width bins: the
    share-weighted gap between each bin's mean confidence and its accuracy (0 is perfect: a confidence
    of 0.9 is right 90 % of the time). Returns `ece`, `bins` and the non-empty bins' figures."""
    confidence = y_prob.max(axis=1)
    correct = y_prob.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for index in range(bins):
        members = which == index
        if not members.any():
            continue
        mean_confidence, accuracy = float(confidence[members].mean()), float(correct[members].mean())
        ece += members.mean() * abs(mean_confidence - accuracy)
        rows.append(
            {
                "lower": float(edges[index]),
                "upper": float(edges[index + 1]),
                "images": int(members.sum()),
                "confidence": mean_confidence,
                "accuracy": accuracy,
            }
        )
    return {"ece": float(ece), "bins": bins, "reliability": rows}


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # Mean recall over the classes that occur in y_true. sklearn's balanced_accuracy_score computes the
    # same but warns when a prediction names a class absent from y_true (common on a small test split).
    present = np.unique(y_true)
    recalls = skm.recall_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    return float(np.mean(recalls))


def baselines(y_true: Sequence[int] | np.ndarray) -> dict[str, float]:
    """What a model must beat on these labels: chance (1 / classes present) for balanced accuracy, and
    always predicting the most common class (its accuracy; its balanced accuracy is chance too)."""
    y_true = np.asarray(y_true).reshape(-1)
    counts = np.bincount(y_true)
    return {
        "chance_balanced_accuracy": 1.0 / int((counts > 0).sum()),
        "majority_accuracy": counts.max() / y_true.size,
    }


def against_baselines(metrics: dict[str, Any]) -> str:
    """One line that puts the balanced accuracy next to chance and the majority-class baseline."""
    figures = metrics["baselines"]
    return (
        f"balanced accuracy {metrics['balanced_accuracy']:.3f} against chance "
        f"{figures['chance_balanced_accuracy']:.3f} (1/{round(1 / figures['chance_balanced_accuracy'])}); "
        f"always predicting the majority class: accuracy {figures['majority_accuracy']:.3f}, balanced "
        f"accuracy {figures['chance_balanced_accuracy']:.3f}; this model: accuracy {metrics['accuracy']:.3f}"
    )


def operating_point(metrics: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    """(positive label, its metrics key, its figures at the threshold, else at the arg-max) of a
    `classification_metrics` result; the figures are None where it has no operating point."""
    for label, key in OPERATING_POINTS.items():
        section = metrics.get(key)
        if section:
            return label, key, section.get("at_threshold") or section.get("at_argmax")
    return MELANOMA, OPERATING_POINTS[MELANOMA], None


def headline(metrics: dict[str, Any]) -> str:
    """The figures a clinician reads first, on one line: macro AUC, melanoma (or malignant)
    sensitivity and specificity, and the expected calibration error."""
    parts = []
    if metrics.get("macro_auc") is not None:
        parts.append(f"macro AUC {metrics['macro_auc']:.3f}")
    label, key, point = operating_point(metrics)
    if point and point["sensitivity"] is not None:
        where = f"P({label}) >= {point['threshold']:.3f}" if "threshold" in point else "arg-max"
        specificity = point["specificity"]
        parts.append(
            f"{key} sensitivity {point['sensitivity']:.3f}, specificity "
            + (f"{specificity:.3f}" if specificity is not None else "n/a")
            + f" ({where})"
        )
    malignant = metrics.get(OPERATING_POINTS[MALIGNANT]) or {}
    if malignant.get("roc_auc") is not None:
        parts.append(f"malignant F1 {malignant['f1']:.3f}, ROC AUC {malignant['roc_auc']:.3f}")
    if "calibration" in metrics:
        parts.append(f"ECE {metrics['calibration']['ece']:.3f}")
    return "; ".join(parts)


def metrics_summary(metrics: dict[str, Any]) -> str:
    """A one-screen, human-readable table of `classification_metrics` output."""
    lines = [
        f"{metrics['images']} images: accuracy {metrics['accuracy']:.4f}, "
        f"balanced accuracy {metrics['balanced_accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
        f"loss {metrics['loss']:.4f}",
        f"  {headline(metrics)}",
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


def plot_reliability_diagram(calibration_figures: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Save `calibration`'s bins as a reliability diagram: accuracy against mean confidence per bin,
    the diagonal being perfect calibration, with the ECE in the title."""
    plt = _pyplot()
    rows = calibration_figures["reliability"]
    figure, axes = plt.subplots(figsize=(5.5, 5))
    width = 1.0 / calibration_figures["bins"]
    axes.bar(
        [row["lower"] for row in rows],
        [row["accuracy"] for row in rows],
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy",
    )
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axes.plot(
        [row["confidence"] for row in rows],
        [row["accuracy"] for row in rows],
        marker="o",
        color="C1",
        label="mean confidence",
    )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence (top-class probability)")
    axes.set_ylabel("accuracy")
    axes.set_title(f"{title + ': ' if title else ''}ECE {calibration_figures['ece']:.3f}")
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
