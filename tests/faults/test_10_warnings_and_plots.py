"""Case 10: no open_clip "No pretrained weights loaded" notice when a bundle's weights are
loaded right after (it still appears for a real random init); plot strips and the VA curve on
one time axis, also on variable-frame-rate video."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from predict_support import make_bundle

NOTICE = "No pretrained weights loaded"


def test_no_random_init_notice_when_loading_a_bundle(tmp_path, caplog):
    from affaccel.bundle import load_bundle
    from affaccel.config import TINY_MODEL, ClipConfig
    from affaccel.nn.clip import build_encoder

    path = make_bundle(tmp_path / "b.pt", tasks=("va",))     # a random init: the notice is right
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_bundle(path)
    assert NOTICE not in caplog.text
    with caplog.at_level(logging.WARNING):
        build_encoder(ClipConfig(model_name=TINY_MODEL))       # a true random init still says so
    assert NOTICE in caplog.text


def _vfr_table():
    from affaccel.inference.table import build_table

    n = 40
    ts = np.concatenate([np.arange(20) * 0.04, 0.8 + np.arange(20) * 0.2])   # 25 fps, then 5 fps
    preds = {"va": np.zeros((n, 2)), "expr": np.full((n, 8), 0.125), "au": np.full((n, 12), 0.5)}
    found = np.ones(n, bool)
    return build_table(0, ts, np.ones((n, 4)), np.ones(n), np.zeros(n, int), found, preds), ts


def test_strips_follow_the_timestamps(tmp_path):
    from affaccel.plots import plot_figure

    df, ts = _vfr_table()
    fig = plot_figure(df)
    va, strip = fig.axes[0], fig.axes[1]
    line_x = va.get_lines()[0].get_xdata()
    np.testing.assert_allclose(line_x, ts)
    # the strip's columns: one per frame, each spanning that frame's time (pcolormesh edges)
    mesh = strip.collections[0]
    edges = np.unique(np.round(mesh.get_coordinates()[..., 0], 9))
    assert len(edges) == len(ts) + 1
    centres = (edges[:-1] + edges[1:]) / 2
    assert np.all(np.abs(centres - ts) <= np.diff(edges) / 2 + 1e-9)
    assert isinstance(df, pd.DataFrame)
