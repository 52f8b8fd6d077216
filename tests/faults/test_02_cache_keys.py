"""Case 2: the caches follow the data. Replacing a video's frame images (same names, same
count: here all grey) makes stage 2 extract that video again and gives stage 1 a new cache key,
so the fine-tuned encoder is trained again instead of reused."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from affaccel.config import TINY_MODEL, ClipConfig
from affaccel.nn.clip import build_encoder
from affaccel.stages.features import FeatureCache, extract_features

from clip_fixtures import make_dataset


def _grey_out(rec):
    for p in dict.fromkeys(rec.frame_paths):
        size = Image.open(p).size
        Image.new("RGB", size, (128, 128, 128)).save(p, quality=90)


@pytest.fixture()
def records(tmp_path):
    return make_dataset(tmp_path / "frames", n_train=2, n_val=1, frames=24)


def test_feature_cache_reextracts_replaced_frames(tmp_path, records):
    enc = build_encoder(ClipConfig(model_name=TINY_MODEL)).eval()
    cache = FeatureCache.for_encoder(tmp_path / "cache", enc)
    first = extract_features(records, enc, cache, batch_size=8, progress=False, backend="reference")
    assert sorted(first["extracted"]) == sorted(r.video_id for r in records)
    before = np.array(cache.load_features("train0"))
    _grey_out(records[0])
    again = extract_features(records, enc, FeatureCache.for_encoder(tmp_path / "cache", enc),
                             batch_size=8, progress=False, backend="reference")
    assert again["extracted"] == ["train0"]
    assert sorted(again["skipped"]) == sorted(r.video_id for r in records[1:])
    after = np.array(FeatureCache.for_encoder(tmp_path / "cache", enc).load_features("train0"))
    assert not np.array_equal(before, after)
    assert np.ptp(after.astype(np.float32), axis=0).max() < 1e-2   # grey frames: one feature


def test_finetune_key_follows_the_frames(tmp_path, records, monkeypatch):
    """The real stage 1 (tiny preset, ~10 s): a rerun on the same frames loads the cached
    checkpoint; after the images are replaced it trains again, into a new folder."""
    from affaccel.stages import pipeline

    home = tmp_path / "home"
    monkeypatch.setenv("AFFACCEL_HOME", str(home))

    def runs():
        return sorted(p.parent.name for p in (home / "finetune").glob("*/done.json"))

    pipeline.encoder_stage(records, "tiny", True, None, progress=False)
    first = runs()
    pipeline.encoder_stage(records, "tiny", True, None, progress=False)     # cached
    assert runs() == first and len(first) == 1
    _grey_out(records[0])
    pipeline.encoder_stage(records, "tiny", True, None, progress=False)
    assert len(runs()) == 2
