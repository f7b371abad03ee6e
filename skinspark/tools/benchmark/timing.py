"""How the benchmark measures: wall time of a call, a job's rate over rounds in one session, and the peak
memory of a process tree."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable

from skinspark.session import child_environment


def timed(function: Callable[[], object]) -> tuple[float, object]:
    """Call `function()`; its wall seconds and its result."""
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def timed_rounds(
    run: Callable[[], object], images: int, describe: Callable[[object], dict], rounds: int = 2
) -> dict:
    """Run a job `rounds` times in the same session; its rate is the last round's (a warm JVM and warm
    Python workers: the steady state a long-lived application sees); every round's time is kept."""
    seconds = []
    for _ in range(rounds):
        elapsed, result = timed(run)
        seconds.append(round(elapsed, 3))
    return {
        "seconds": seconds[-1],
        "images_per_second": round(images / seconds[-1], 1),
        "round_seconds": seconds,
        **describe(result),
    }


def peak_tree_rss(command: list[str], interval: float = 0.25) -> int:
    """Run `command` to the end, sampling the summed RSS of it and all its descendants; the peak."""
    import psutil

    # A clean environment: a child of a spark-submit driver would otherwise join the parent's JVM.
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_environment()
    )
    parent = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        total = 0
        try:
            for member in [parent, *parent.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += member.memory_info().rss
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(interval)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited with {process.returncode}")
    return peak
