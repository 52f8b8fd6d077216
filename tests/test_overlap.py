"""affaccel.inference.overlap: the decode thread keeps order, re-raises, reports idle times,
stops when the consumer leaves; the predictor's overlapped run equals its serial run."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from affaccel.inference.overlap import Prefetch, PrefetchStats, prefetch

from predict_support import face_frames, make_bundle, write_video


def test_prefetch_keeps_order_and_reraises():
    assert list(Prefetch(iter(range(50)), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("decoder failed at frame 2")

    it = iter(Prefetch(broken()))
    assert next(it) == 1
    with pytest.raises(ValueError, match="frame 2"):
        next(it)
    with pytest.raises(ValueError, match="depth"):
        Prefetch([], depth=0)


def test_prefetch_stats_and_depth_zero():
    stats = PrefetchStats()

    def slow():
        for i in range(5):
            time.sleep(0.01)
            yield i

    assert list(prefetch(slow(), 2, stats)) == list(range(5))
    assert stats.items == 5 and stats.busy_s >= 0.04 and stats.wait_s > 0
    ident = []
    gen = (ident.append(threading.get_ident()) or i for i in range(3))
    assert list(prefetch(gen, 0, stats)) == [0, 1, 2]
    assert set(ident) == {threading.get_ident()}          # depth 0: the caller's thread


def test_consumer_leaving_early_stops_the_producer():
    closed = []

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(True)

    it = prefetch(endless(), 2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert closed == [True]
    assert not [t for t in threading.enumerate() if t.name == "affaccel-decode"]


def test_predictor_overlapped_equals_serial(tmp_path):
    from affaccel.inference.predictor import AffectPredictor

    video = write_video(tmp_path / "v.mp4", face_frames(30))
    pred = AffectPredictor.from_bundle(make_bundle(tmp_path / "b.pt"), device="cpu")
    pred.prefetch_stats = PrefetchStats()
    a = pred.predict_video(str(video), batch_size=8).frame
    assert pred.prefetch_stats.items == 4                 # 30 frames in batches of 8, decoded ahead
    pred.prefetch_depth = 0
    b = pred.predict_video(str(video), batch_size=8).frame
    assert pred.prefetch_stats.items == 4                 # serial: not prefetched
    num = [c for c in a.columns if a[c].dtype.kind == "f"]
    np.testing.assert_array_equal(a[num].to_numpy(), b[num].to_numpy())
