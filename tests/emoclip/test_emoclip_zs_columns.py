"""AffectPredictor's ``zs_<label>`` columns: per-frame zero-shot probabilities from 8-frame
windows through EmoCLIP's image tower, spread back with the overlap averaging, beside the
VA/EXPR/AU tasks or without them; checked against an independent window loop."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from affaccel.emoclip.config import EmoClipConfig, TemporalClsConfig
from affaccel.emoclip.descriptions import label_set_from_mapping
from affaccel.emoclip.frames import ZeroShotScorer
from affaccel.emoclip.model import build_emoclip
from affaccel.inference.predictor import AffectPredictor
from affaccel.video.crop import crop_faces

from predict_support import face_frames, make_bundle

N = 21
LABELS = {"calm": "A relaxed face.", "joy": ["A smile.", "Raised cheeks."],
          "mixed": {"compound": ["calm", "joy"]}}


@pytest.fixture(scope="module")
def scorer():
    model = build_emoclip(EmoClipConfig(model_name="affaccel-rn-tiny", init_seed=1,
                                        temporal=TemporalClsConfig(width=128, layers=1, heads=2, head_dim=8,
                                                                   ff_dim=16, max_len=16)))
    return ZeroShotScorer(model, label_set_from_mapping(LABELS), clip_len=4, frame_step=2)


def boxes(hidden):
    b = np.array([[40 + (2 * i) % 170, 60, 100, 117] for i in range(N)], np.float64)
    b[list(hidden)] = np.nan
    return b


def expected(scorer, frames, bx):
    """Independent: crop, encode, fill faceless frames with the previous face's embedding, then
    for each window of 8 frames every 2nd frame, then a per-frame mean over covering windows."""
    enc = scorer.encoder
    found = ~np.isnan(bx[:, 0])
    crops, _ = crop_faces(frames, torch.as_tensor(bx, dtype=torch.float32), enc.image_size, enc.mean, enc.std)
    with torch.no_grad():
        emb = scorer.model.encode_frames(crops[torch.as_tensor(np.nonzero(found)[0])].float())
        full = torch.zeros((N, emb.shape[1]))
        full[torch.as_tensor(np.nonzero(found)[0])] = emb
        last = emb[0]
        for t in range(N):
            full[t] = full[t] if found[t] else last
            last = full[t]
        text = scorer.model.encode_text(scorer.model.tokenize(["A relaxed face.", "A smile.", "Raised cheeks."]))
        t = F.normalize(text, dim=-1)
        calm, joy = t[0], F.normalize(t[1] + t[2], dim=-1)
        cls = torch.stack([calm, joy, F.normalize(calm + joy, dim=-1)])
        total, count = np.zeros((N, 3)), np.zeros(N)
        for s in [0, 4, 8, 12, 13]:            # windows of 8, stride 4, the last one ends at frame 20
            v = scorer.model.encode_video(full[s:s + 8:2][None])
            p = torch.softmax(scorer.model.logit_scale.exp() * F.normalize(v, dim=-1) @ cls.T, -1)[0].numpy()
            total[s:s + 8] += p
            count[s:s + 8] += 1
    out = total / count[:, None]
    out[~found] = np.nan
    return out


def test_zs_columns_without_affect_tasks(scorer):
    hidden = (0, 7, 8)
    frames = face_frames(N, hidden=hidden)
    pred = AffectPredictor({}, emoclip=scorer, device="cpu")
    res = pred.predict_video(frames, boxes=boxes(hidden))
    cols = ["zs_calm", "zs_joy", "zs_mixed"]
    assert [c for c in res.frame.columns if c.startswith("zs_")] == cols
    got = res.frame[cols].to_numpy()
    np.testing.assert_allclose(got, expected(scorer, frames, boxes(hidden)), rtol=1e-4, atol=1e-5)
    assert np.isnan(got[list(hidden)]).all()
    np.testing.assert_allclose(np.nansum(got, 1)[res.frame["face_found"].to_numpy()], 1.0, rtol=1e-5)


def test_zs_columns_beside_the_affect_tasks(scorer, tmp_path):
    frames = face_frames(N)
    base = AffectPredictor.from_bundle(make_bundle(tmp_path / "b.pt", tasks=("va",)), device="cpu")
    both = AffectPredictor(base.models, encoder=base.encoder, window=base.window, stride=base.stride,
                           device="cpu", emoclip=scorer)
    res = both.predict_video(frames, boxes=boxes(()))
    ref = base.predict_video(frames, boxes=boxes(()))
    np.testing.assert_allclose(res.frame["valence"], ref.frame["valence"], rtol=1e-6)
    np.testing.assert_allclose(res.frame[["zs_calm", "zs_joy", "zs_mixed"]].to_numpy(),
                               expected(scorer, frames, boxes(())), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="zs_"):
        both.predict_video(None, features=np.zeros((N, base.encoder.feature_dim), np.float32))


@pytest.mark.parametrize("with_tasks", [False, True])
def test_zs_columns_streamed(scorer, tmp_path, with_tasks):
    """stream=True gives the whole-video rows and zs_ columns (the zero-shot windows stream beside
    the temporal ones), for a face missing at the start and in the middle, in small batches."""
    hidden = (0, 1, 9)
    frames = face_frames(N, hidden=hidden)
    if with_tasks:
        base = AffectPredictor.from_bundle(make_bundle(tmp_path / "b.pt", tasks=("va",)), device="cpu")
        pred = AffectPredictor(base.models, encoder=base.encoder, window=12, stride=8, device="cpu",
                               emoclip=scorer)
    else:
        pred = AffectPredictor({}, emoclip=scorer, device="cpu")
    whole = pred.predict_video(frames, boxes=boxes(hidden)).frame
    for batch in (1, 5, 64):
        chunks = list(pred.predict_stream(frames, boxes=boxes(hidden), batch_size=batch))
        assert len(chunks) >= (2 if batch < N else 1)
        streamed = pd.concat(chunks, ignore_index=True)
        assert list(streamed.columns) == list(whole.columns)
        assert streamed["frame"].tolist() == list(range(N))
        num = [c for c in whole.columns if c.startswith("zs_") or c in ("valence", "arousal")]
        np.testing.assert_allclose(streamed[num].to_numpy(float), whole[num].to_numpy(float), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole[["zs_calm", "zs_joy", "zs_mixed"]].to_numpy(),
                               expected(scorer, frames, boxes(hidden)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="zs_"):
        list(pred.predict_stream(None, features=np.zeros((N, 128), np.float32)))
