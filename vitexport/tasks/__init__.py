"""Tasks: what a model does, as typed plug-ins the stages ask instead of branching on a name.

| task           | module            | model                                     | served answer                   |
|----------------|-------------------|-------------------------------------------|---------------------------------|
| classification | classification.py | pixel_values -> logits                    | probabilities, labelled (top k) |
| features       | classification.py | pixel_values -> embeddings                | the embedding                   |
| detection      | detection.py      | pixel_values, pixel_mask -> logits, boxes | boxes, scores, labels, count    |

A new task (segmentation, say) is one module here defining a `Task` subclass and its instance, one line in `TASKS`
below, a post-processing model in serving/backends/ if it answers other than its model's outputs, and its tests.
"""

from __future__ import annotations

from typing import Any

from vitexport.errors import VitExportError
from vitexport.tasks.base import Budget, Grade, InputSet, Task, TensorSpec
from vitexport.tasks.classification import CLASSIFICATION, FEATURES, Tolerance
from vitexport.tasks.detection import DETECTION, DetectionTolerance

__all__ = [
    "CLASSIFICATION",
    "DETECTION",
    "FEATURES",
    "TASKS",
    "Budget",
    "DetectionTolerance",
    "Grade",
    "InputSet",
    "Task",
    "TensorSpec",
    "Tolerance",
    "get_task",
    "task_of",
]

TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, FEATURES, DETECTION)}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise VitExportError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def task_of(thing: Any) -> Task:
    """The task of anything that names one in `.task` (a ModelSpec, a ModelArtifact, a benchmark subject)."""
    return get_task(thing.task)
