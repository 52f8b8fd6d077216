"""Case 7: several people and a scene cut. The cut is detected and ends every track (new ids
after it), the default single-subject table marks the subject change (``face_id`` and a new
``segment``), no temporal window spans the two people, and streaming gives the same rows."""
from __future__ import annotations

import numpy as np
import pytest

from predict_support import face_frames, make_bundle, two_people_cut_frames

CUT = 40
PRED = ["valence", "arousal", "Neutral", "AU1", "AU26"]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from affaccel.inference.predictor import AffectPredictor

    path = make_bundle(tmp_path_factory.mktemp("b") / "b.pt")
    return AffectPredictor.from_bundle(path, device="cpu")


@pytest.fixture(scope="module")
def frames():
    return two_people_cut_frames(CUT, 40)


def test_cut_is_detected_and_ends_every_track(frames):
    from affaccel.faces.detector import HaarFaceDetector
    from affaccel.faces.tracker import FaceTracker

    det = HaarFaceDetector()
    assert len(det.detect(frames[:1])[0]) == 2          # two people before the cut
    out = FaceTracker(det).track([frames[i:i + 16] for i in range(0, len(frames), 16)])
    assert np.nonzero(out.cuts)[0].tolist() == [CUT]
    before, after = set(out.ids[:CUT].tolist()), set(out.ids[CUT:].tolist())
    assert -1 not in before | after and not before & after      # no gap, but new ids after
    # redetect_every > 1: the detector still runs on the cut frame
    out = FaceTracker(det, redetect_every=7).track([frames])
    assert out.detected[CUT] and out.ids[CUT] not in set(out.ids[:CUT].tolist())


def test_no_false_cuts_on_smooth_video():
    from affaccel.faces.tracker import colour_histograms, histogram_changes

    sliding = face_frames(60)                                 # moving face, noisy scene
    fade = np.stack([np.full((48, 64, 3), 20 + 2 * i, np.uint8) for i in range(100)])   # flat fade
    yy, xx = np.mgrid[:120, :400]
    texture = ((np.sin(xx / 9.0) + np.cos(yy / 7.0)) * 60 + 128).astype(np.uint8)
    pan = np.stack([np.repeat(texture[:, 3 * i:3 * i + 160, None], 3, 2) for i in range(60)])
    for clip in (sliding, fade, pan):
        change = histogram_changes(colour_histograms(clip), None)
        assert change.max() < 0.2, change.max()               # threshold 0.4; a cut here: ~0.8
    cut = histogram_changes(colour_histograms(two_people_cut_frames(CUT, 40)), None)
    assert cut[CUT] > 0.6 and np.delete(cut, CUT).max() < 0.2


def test_subject_change_starts_a_segment_and_windows_do_not_span_it(predictor, frames):
    res = predictor.predict_video(frames)
    df = res.frame
    assert "segment" in df.columns and df["face_found"].all()
    assert (df["segment"].to_numpy() == np.repeat([0, 1], [CUT, len(frames) - CUT])).all()
    assert df["face_id"][:CUT].nunique() == 1 and df["face_id"][CUT:].nunique() == 1
    assert df["face_id"][0] != df["face_id"][CUT]
    # the frames of each person are predicted from that person's frames only
    first = predictor.predict_video(frames[:CUT]).frame
    second = predictor.predict_video(frames[CUT:]).frame
    np.testing.assert_allclose(df[PRED][:CUT].to_numpy(), first[PRED].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(df[PRED][CUT:].to_numpy(), second[PRED].to_numpy(), atol=1e-5)
    # streaming gives the same rows (a new stream at the segment boundary)
    streamed = predictor.predict_video(frames, stream=True, batch_size=24).frame
    assert streamed["frame"].tolist() == list(range(len(frames)))
    assert streamed["segment"].tolist() == df["segment"].tolist()
    np.testing.assert_allclose(streamed[PRED].to_numpy(), df[PRED].to_numpy(), atol=1e-5)


def test_segments_with_gaps_and_face_less_frames(predictor):
    """Frames without a face have segment -1 and stay in their segment for the windows; a face
    lost and found again (a new track id after the gap, no cut) keeps the segment."""
    clip = face_frames(50, hidden=range(10, 16))
    batch = predictor.predict_video(clip).frame
    streamed = predictor.predict_video(clip, stream=True, batch_size=16).frame
    assert batch["segment"].tolist() == streamed["segment"].tolist()
    assert (batch.loc[~batch["face_found"], "segment"] == -1).all()
    assert set(batch.loc[batch["face_found"], "segment"]) == {0}
    assert batch.loc[batch["face_found"], "face_id"].nunique() == 2
    np.testing.assert_allclose(streamed[PRED].to_numpy(), batch[PRED].to_numpy(), atol=1e-5)
