"""What every benchmark row records about where and on what code it was measured, and the one
timer every bench script uses (DESIGN.md convention 9).

Timing API (all medians; seconds unless the name says ms):

* ``wall_clock(fn, repeats, warmup=1) -> Samples``: ``fn()`` ``warmup`` times untimed, then
  ``repeats`` timed runs (wall and process CPU time). CPU benchmarks, and end-to-end GPU
  pipelines whose ``fn`` synchronises the device itself.
* ``interleaved(fns, repeats, warmup=1) -> [Samples]``: the same for several candidates in
  rotating round-robin order (``rotated``), so load from other processes on a shared machine
  hits every candidate alike.
* ``gpu_median_ms(fn, warmup=25, rep=100, grad_to_none=None, untimed_calls=0) -> float``:
  ``triton.testing.do_bench`` median in milliseconds (Triton is imported only here).
* ``Stopwatch``: one measured span (``with Stopwatch() as sw: ...; sw.wall``).
* ``StageClock``: seconds per pipeline stage of one run, added up (``with clock("decode"):``).
"""
from __future__ import annotations

import platform
import statistics
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(*paths: str) -> str:
    """Short HEAD, with "+dirty" when the code under ``paths`` (all if none) has local changes."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT,
                               text=True, capture_output=True, timeout=10).stdout
        return (out or "unknown") + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --------------------------------------------------------------------------------------------
# timing


def median(xs: Iterable[float]) -> float:
    """Median, NaN for no samples (a stage that never ran)."""
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


class Stopwatch:
    """Wall (``perf_counter``) and process CPU (``process_time``, all threads) seconds of the
    ``with`` block."""

    wall = cpu = 0.0

    def __enter__(self) -> Stopwatch:
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0


@dataclass
class Samples:
    """Timed runs of one candidate: wall and process CPU seconds per run."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, sw: Stopwatch) -> None:
        self.wall.append(sw.wall)
        self.cpu.append(sw.cpu)

    @property
    def median(self) -> float:
        return median(self.wall)

    @property
    def min(self) -> float:
        return min(self.wall) if self.wall else float("nan")

    @property
    def cpu_median(self) -> float:
        return median(self.cpu)


def rotated(items: Sequence, r: int) -> list:
    """``items`` rotated left by ``r``: round ``r`` of a round-robin with no fixed neighbour."""
    items = list(items)
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


def interleaved(fns: Sequence[Callable[[], Any]], repeats: int, warmup: int = 1) -> list[Samples]:
    """Time every ``fn()`` ``repeats`` times, round-robin, after ``warmup`` untimed rounds.

    Round-robin order spreads load from other processes over all candidates alike (the
    development machines are shared); rotating the order each round keeps one candidate from
    always following another (one that frees a large buffer makes the next fresh allocation pay
    for page faults and transparent-huge-page compaction). Return values are dropped.
    """
    samples = [Samples() for _ in fns]
    for r in range(warmup + repeats):
        for i in rotated(range(len(fns)), r):
            with Stopwatch() as sw:
                fns[i]()
            if r >= warmup:
                samples[i].add(sw)
    return samples


def wall_clock(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Samples:
    """``fn()`` ``warmup`` times untimed, then ``repeats`` timed runs."""
    return interleaved([fn], repeats, warmup)[0]


def gpu_median_ms(fn: Callable[[], Any], warmup: int = 25, rep: int = 100, grad_to_none=None,
                  untimed_calls: int = 0) -> float:
    """Median milliseconds of ``fn()`` on the GPU by ``triton.testing.do_bench`` (``warmup`` and
    ``rep`` are its windows in ms). ``untimed_calls`` runs first and are synchronised, so that
    autotuning and compilation do not skew do_bench's estimate of how many runs fit."""
    import torch
    from triton.testing import do_bench

    for _ in range(untimed_calls):
        fn()
    if untimed_calls:
        torch.cuda.synchronize()
    return float(do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none,
                          return_mode="median"))


class StageClock:
    """Seconds each stage of one pipeline run takes, added up over calls:
    ``with clock("encoder"): ...``. The block must synchronise any asynchronous device work it
    launches, or the time lands in a later stage."""

    def __init__(self, stages: Iterable[str]):
        self.s = dict.fromkeys(stages, 0.0)

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.s[stage] += time.perf_counter() - t0
