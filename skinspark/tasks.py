"""What a model predicts: the seven diagnoses (`dx7`) or benign against malignant (`malignant`).

The ingested table always holds the seven-class `label` column; a task maps it onto the model's output
units when training reads it, and names those units for the model directory (`labels.json`), the
metrics and scoring's `prob_<label>` columns. Each task has a class whose sensitivity a reader asks
for first: melanoma among the diagnoses, malignant in the binary task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from skinspark import schema


@dataclasses.dataclass(frozen=True)
class Task:
    """A task's output units and how the table's diagnoses map onto them."""

    name: str
    labels: tuple[str, ...]  # output units, in order
    names: dict[str, str]  # label -> long name
    label_map: tuple[int, ...]  # the table's label index (schema.LABELS) -> this task's unit
    positive: str  # the class whose sensitivity and specificity are reported at an operating point

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def prob_columns(self) -> tuple[str, ...]:
        """Scoring's probability columns, one per output unit."""
        return tuple(f"prob_{label}" for label in self.labels)

    def map_labels(self, labels: Sequence[int] | np.ndarray) -> np.ndarray:
        """The table's label indices as this task's unit indices."""
        return np.asarray(self.label_map, dtype=np.int32)[np.asarray(labels, dtype=np.int64)]

    def class_counts(self, by_class: Mapping[str, int]) -> dict[str, int]:
        """Image counts per diagnosis (as the ingest manifest records them) summed per unit."""
        counts = dict.fromkeys(self.labels, 0)
        for dx, count in by_class.items():
            counts[self.labels[self.label_map[schema.LABEL_INDEX[dx]]]] += int(count)
        return counts


DX7 = Task(
    name="dx7",
    labels=schema.LABELS,
    names=dict(schema.LABEL_NAMES),
    label_map=tuple(range(schema.NUM_CLASSES)),
    positive="mel",
)
MALIGNANT = Task(
    name="malignant",
    labels=schema.BINARY_LABELS,
    names=dict(schema.BINARY_LABEL_NAMES),
    label_map=tuple(int(dx in schema.MALIGNANT_DX) for dx in schema.LABELS),
    positive="malignant",
)
TASKS: dict[str, Task] = {task.name: task for task in (DX7, MALIGNANT)}


def get_task(name: str) -> Task:
    """The task called `name`; raises ValueError naming the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}") from None


def task_of_labels(labels: Sequence[str]) -> Task:
    """The task whose output units are `labels` (a model directory's labels.json), in that order.

    Raises:
        ValueError: labels of no known task, or in another order.
    """
    for task in TASKS.values():
        if tuple(labels) == task.labels:
            return task
    known = "; ".join(f"{task.name}: {list(task.labels)}" for task in TASKS.values())
    raise ValueError(f"model labels {list(labels)} are those of no task (order matters): {known}")
