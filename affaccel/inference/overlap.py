"""Decoding overlapped with the rest of the pipeline: a background thread runs ahead of the
consumer (face boxes, crops, the encoder, the temporal model).

``AffectPredictor`` decodes every CPU-decoded video through :func:`prefetch`, so
``python -m affaccel.predict`` users get the overlap, not only the benchmark. PyAV decodes and
torch computes with the GIL released, so the decode thread and the encoder run on separate
cores. The queue holds at most ``depth`` decoded batches (memory: ``depth`` x batch x H x W x 3
bytes), and frames come out in decode order, so predictions are those of a serial run.

``PrefetchStats`` records each side's idle time: how long the decoder sat blocked on a full
queue (the consumer is slower: decoding is not the bound) and how long the consumer waited on
an empty queue (decoding is the bound). bench/throughput.py reports both.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass
class PrefetchStats:
    """Seconds, added up over every prefetched iterator that reported to this object."""
    busy_s: float = 0.0       # producer computing the next item
    blocked_s: float = 0.0    # producer waiting on a full queue
    wait_s: float = 0.0       # consumer waiting on an empty queue
    items: int = 0

    def add(self, other: "PrefetchStats") -> None:
        self.busy_s += other.busy_s
        self.blocked_s += other.blocked_s
        self.wait_s += other.wait_s
        self.items += other.items


class Prefetch:
    """Runs an iterator in a background thread, ``depth`` items ahead; iterating yields its
    items in order and re-raises its exception in the consumer. ``stats``: this run's
    ``PrefetchStats``. If the consumer stops early, the producer stops at its next item."""

    _END = object()

    def __init__(self, it: Iterable, depth: int = 3):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stats = PrefetchStats()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(iter(it),), daemon=True,
                                   name="affaccel-decode")
        self._t.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it):
        st = self.stats
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                item = next(it, self._END)
                t1 = time.perf_counter()
                st.busy_s += t1 - t0
                ok = self._put(item)
                st.blocked_s += time.perf_counter() - t1
                if item is self._END or not ok:
                    return
                st.items += 1
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            self.error = e
            self._put(self._END)
        finally:
            close = getattr(it, "close", None)
            if close is not None and self._stop.is_set():
                close()      # the consumer left early: let the decoder release its file

    def close(self) -> None:
        """Stop the producer (at its next item) and wait for it."""
        self._stop.set()
        self._t.join()

    def __iter__(self) -> Iterator:
        try:
            while True:
                t0 = time.perf_counter()
                item = self.q.get()
                self.stats.wait_s += time.perf_counter() - t0
                if item is self._END:
                    self._t.join()
                    if self.error is not None:
                        raise self.error
                    return
                yield item
        finally:
            if self._t.is_alive():
                self.close()


def prefetch(it: Iterable, depth: int = 3, stats: PrefetchStats | None = None) -> Iterator:
    """``it`` decoded ``depth`` items ahead in a background thread (``depth`` 0: ``it`` as it is,
    in the caller's thread). ``stats``: add this run's idle times to it when the run ends."""
    if depth <= 0:
        yield from it
        return
    p = Prefetch(it, depth)
    try:
        yield from p
    finally:
        if stats is not None:
            stats.add(p.stats)


__all__ = ["Prefetch", "PrefetchStats", "prefetch"]
