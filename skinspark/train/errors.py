"""Training's errors: the types the driver raises, each rank's error report and the driver's one-line
diagnosis of a failed run from those reports. Imports nothing of skinspark.train, so that every
module of it can raise these."""

from __future__ import annotations

import contextlib
import json
import re
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from skinspark.errors import JobError, TableError, typed_line
from skinspark.manifest import write_json_atomic

ERRORS = "_errors"  # MODEL_DIR/_errors/rank-N.json: each failed rank's error and traceback


class TrainError(JobError):
    """Training failed: a rank's error (the message says which rank and why) or a start timeout."""


class TrainInputError(TrainError):
    """Training cannot start: unusable input table or an output directory that holds another run."""


@contextlib.contextmanager
def table_errors() -> Iterator[None]:
    """Raise a TableError from inside (an ingested table that does not read: `skinspark.table`) as the
    TrainInputError it is to training, with the same message."""
    try:
        yield
    except TableError as error:
        raise TrainInputError(str(error)) from error


def describe_failure(
    error: BaseException,
    error_dir: Path,
    num_proc: int,
    start_timeout_s: int,
    exited: tuple[str, str] | None = None,
) -> str:
    """One line naming the rank that failed first and its error, from the ranks' error files.

    `exited` is (rank, exit code) of a rank that exited without a result, or (rank, how it went) when
    it has no exit code (a lost Spark task); by default it is read from Horovod's message ("Process
    name: 1\nExit code: 137").
    """
    reports = []
    for path in sorted(Path(error_dir).glob("rank-*.json")):
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if exited is None:
        # Horovod names the first rank process that exited ("Process name: 1\nExit code: 137").
        found = re.search(r"Process name: (\S+)\s+Exit code: (\S+)", str(error))
        exited = (found.group(1), found.group(2)) if found else None
    how = ""
    if exited:
        how = f"exit code {exited[1]}" if exited[1].lstrip("-").isdigit() else exited[1]
    if reports:
        # A failing rank takes the others down with it (their collectives break): the root cause is
        # the report written first.
        reports.sort(key=lambda report: report["time"])
        first = reports[0]
        reported = {str(report["rank"]) for report in reports}
        if exited and exited[0] not in reported and exited[1] != "1":
            # A rank killed outright (out of memory: exit code 137, or its executor lost) writes no report,
            # and Horovod saw it go first: it is the cause. (Ranks that stop on their own exit with 1.) The
            # others only report what its disappearance did to them ("Horovod has been shut down. ...").
            return (
                f"training failed: rank {exited[0]} exited first without reporting an error ({how}: "
                "killed, or its executor lost? see the executor's log); then "
                f"{len(reports)} other rank(s) failed, first rank {first['rank']}: "
                + first["error"].split(". ")[0]
            )
        others = f" ({len(reports) - 1} other rank(s) failed after it)" if len(reports) > 1 else ""
        # A rank that reported its error may still not have been the first to exit.
        killed = (
            f"; rank {exited[0]} exited first ({how})" if exited and exited[0] != str(first["rank"]) else ""
        )
        return f"training failed on rank {first['rank']}: {first['error']}{others}{killed}"
    if exited:
        return (
            f"training failed: rank {exited[0]} exited without reporting an error ({how}: "
            "killed? see the executor's log)"
        )
    message = typed_line(error)
    if "Timed out" in message:
        return (
            f"the {num_proc} Horovod ranks did not all start within {start_timeout_s} s: the Spark "
            f"application needs {num_proc} free task slots (set --num-proc or start_timeout_s)"
        )
    return f"training failed: {message}"


def report_error(error_dir: str, rank: int, error: BaseException) -> None:
    """Leave this rank's error where the driver looks for it (best effort: never masks the error)."""
    try:
        directory = Path(error_dir)
        directory.mkdir(parents=True, exist_ok=True)
        report = {
            "rank": rank,
            "time": time.time(),
            "error": typed_line(error),
            "traceback": "".join(traceback.format_exception(error)),
        }
        write_json_atomic(directory / f"rank-{rank}.json", report)
    except Exception:  # noqa: BLE001 - reporting must not replace the real error
        pass
