"""The scoring job's stopping error, in a module of its own so that every scoring module can raise it
without importing the module of another."""

from __future__ import annotations

from skinspark.errors import JobError


class ScoreError(JobError):
    """A problem that stops the whole scoring job (bad model directory, missing input, a foreign
    output)."""
