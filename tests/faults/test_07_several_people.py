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


def test_tracker_reports_every_live_track(frames):
    from affaccel.faces.detector import HaarFaceDetector
    from affaccel.faces.tracker import TRACK_COLUMNS, FaceTracker

    out = FaceTracker(HaarFaceDetector()).track([frames[i:i + 16] for i in range(0, len(frames), 16)])
    assert out.tracks.shape[1] == len(TRACK_COLUMNS)
    frame, ids = out.tracks[:, 0].astype(int), out.tracks[:, 1].astype(int)
    per_frame = np.bincount(frame, minlength=len(frames))
    assert (per_frame[:CUT] == 2).all() and (per_frame[CUT:] == 1).all()   # both people, then one
    assert len(set(ids[frame < CUT])) == 2 and not set(ids[frame < CUT]) & set(ids[frame >= CUT])
    # the followed subject is one of the reported tracks, with the same box
    for f in (0, CUT - 1, CUT, len(frames) - 1):
        row = out.tracks[(frame == f) & (ids == out.ids[f])]
        np.testing.assert_array_equal(row[0, 2:6], out.boxes[f])


def test_subjects_all_gives_one_table_per_person(predictor, frames):
    from affaccel.inference.subjects import predict_subjects

    subs, short = predict_subjects(predictor, frames)
    assert short == {} and [(s.first, s.last) for s in subs] == [(0, CUT - 1), (0, CUT - 1), (CUT, 79)]
    main = predictor.predict_video(frames).frame
    for s in subs:
        df = s.result.frame
        assert df["frame"].tolist() == list(range(len(frames)))        # every frame, like _left/_right
        inside = (df["frame"] >= s.first) & (df["frame"] <= s.last)
        assert (df["face_found"] == inside).all() and (df.loc[inside, "face_id"] == s.track_id).all()
        assert df.loc[~inside, PRED].isna().all().all() and df.loc[inside, PRED].notna().all().all()
        # each person's predictions come from that person's crops only: the same as the default
        # mode given that track's boxes over the track's frames
        boxes = df.loc[inside, ["face_x", "face_y", "face_w", "face_h"]].to_numpy()
        alone = predictor.predict_video(frames[s.first:s.last + 1], boxes=boxes).frame
        np.testing.assert_allclose(df.loc[inside, PRED].to_numpy(), alone[PRED].to_numpy(), atol=1e-5)
    # the speaker's table is the default mode's table before the cut, the close-up's after it
    np.testing.assert_allclose(subs[0].result.frame[PRED][:CUT].to_numpy(), main[PRED][:CUT].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(subs[2].result.frame[PRED][CUT:].to_numpy(), main[PRED][CUT:].to_numpy(), atol=1e-5)
    # the background person differs from the speaker
    assert np.abs(subs[1].result.frame["valence"][:CUT] - subs[0].result.frame["valence"][:CUT]).max() > 1e-4
    subs, short = predict_subjects(predictor, frames, min_frames=CUT + 1)
    assert short == {0: CUT, 1: CUT, 2: 80 - CUT} and len(subs) == 1 and subs[0].track_id is None
    assert not subs[0].result.frame["face_found"].any() and len(subs[0].result.frame) == len(frames)


def test_subjects_all_command(tmp_path, predictor, frames, capsys):
    import json

    import pandas as pd

    from affaccel.inference.subjects import predict_subjects
    from affaccel.predict import main
    from affaccel.predict_jobs import subject_name

    from predict_support import write_video

    vid = write_video(tmp_path / "talk.mp4", frames)
    bundle, out = str(make_bundle(tmp_path / "b.pt")), tmp_path / "out"
    assert main([str(vid), "--bundle", bundle, "--out", str(out), "--subjects", "all", "--no-progress"]) == 0
    entry = json.loads((out / "manifest.json").read_text())["inputs"][0]
    # the same subjects as the API on the same file (H.264 loses the small background face here)
    subs, _ = predict_subjects(predictor, str(vid))
    assert len(subs) >= 2 and subs[0].last == CUT - 1 and subs[-1].first == CUT
    assert entry["status"] == "ok" and [s["track"] for s in entry["subjects"]] == [s.track_id for s in subs]
    assert sorted(p.name for p in out.glob("*.csv")) == [f"talk_face{s.track_id}.csv" for s in subs]
    for s, api in zip(entry["subjects"], subs):
        df = pd.read_csv(s["outputs"][0])
        assert len(df) == len(frames) and df["face_found"].sum() == s["faces"] == api.last - api.first + 1
        np.testing.assert_allclose(df[PRED].to_numpy(), api.result.frame[PRED].to_numpy(), atol=1e-5)
    assert "talk_face0.csv" in capsys.readouterr().out
    # every track too short: one face-less table under the video's own name, and a warning
    out2 = tmp_path / "out2"
    assert main([str(vid), "--bundle", bundle, "--out", str(out2), "--subjects", "all", "--no-progress",
                 "--min-track-frames", "1000"]) == 0
    entry = json.loads((out2 / "manifest.json").read_text())["inputs"][0]
    assert entry["status"] == "no_face" and len(entry["short_tracks"]) == len(subs)
    assert [p.name for p in out2.glob("*.csv")] == ["talk.csv"]
    assert any("shorter than --min-track-frames" in w for w in entry["warnings"])
    # options that do not apply are refused before any work
    assert main([str(vid), "--bundle", bundle, "--out", str(out2), "--subjects", "all", "--stream"]) == 2
    # a per-person name never takes another input's output name
    assert subject_name("x", 0, {"x", "x_face0"}) == "x_face0_1"


def test_cuts_with_user_boxes_crops_and_features(predictor, frames):
    """With the user's boxes the cut is still detected on the frames; crops and features carry
    no frames, so the caller's ``cuts`` are used. Either way each side is predicted alone."""
    import torch

    tracked = predictor.predict_video(frames).frame
    boxes = tracked[["face_x", "face_y", "face_w", "face_h"]].to_numpy()
    halves = [slice(0, CUT), slice(CUT, len(frames))]
    df = predictor.predict_video(frames, boxes=boxes).frame
    assert df["segment"].tolist() == [0] * CUT + [1] * (len(frames) - CUT)
    for h in halves:
        alone = predictor.predict_video(frames[h], boxes=boxes[h]).frame
        np.testing.assert_allclose(df[PRED][h].to_numpy(), alone[PRED].to_numpy(), atol=1e-5)
    streamed = predictor.predict_video(frames, boxes=boxes, stream=True, batch_size=24).frame
    np.testing.assert_allclose(streamed[PRED].to_numpy(), df[PRED].to_numpy(), atol=1e-5)

    feats = torch.randn(len(frames), predictor.feature_dim, generator=torch.Generator().manual_seed(0))
    whole = predictor.predict_video(None, features=feats).frame
    assert set(whole["segment"]) == {0}
    for cuts in ([CUT], np.arange(len(frames)) == CUT):
        cut = predictor.predict_video(None, features=feats, cuts=cuts).frame
        assert cut["segment"].tolist() == [0] * CUT + [1] * (len(frames) - CUT)
        for h in halves:
            alone = predictor.predict_video(None, features=feats[h]).frame
            np.testing.assert_allclose(cut[PRED][h].to_numpy(), alone[PRED].to_numpy(), atol=1e-5)
    assert np.abs(whole["valence"][:CUT] - cut["valence"][:CUT]).max() > 1e-4   # the cut mattered
    crops = torch.rand(len(frames), 3, predictor.encoder.image_size, predictor.encoder.image_size)
    assert predictor.predict_video(None, crops=crops, cuts=[CUT]).frame["segment"].tolist() == cut["segment"].tolist()
    with pytest.raises(ValueError, match="cuts"):
        predictor.predict_video(None, features=feats, cuts=[-3])


def test_colour_histograms_match_the_per_pixel_definition():
    """The fast histogram (value counts x soft-bin matrix) equals the definition computed pixel
    by pixel: each sampled value adds 1 - w to its lower bin and w to the next."""
    from affaccel.faces.tracker import HIST_BINS, HIST_STEP, colour_histograms

    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (3, 13, 17, 3), dtype=np.uint8)
    frames[1, ::2] = 0
    frames[2, :, :5] = 255
    want = np.zeros((3, 3, HIST_BINS))
    sample = frames[:, ::HIST_STEP, ::HIST_STEP]
    for f in range(3):
        for c in range(3):
            vals = sample[f, ..., c].ravel()
            for v in vals:
                pos = min(max(int(v) * HIST_BINS / 256.0 - 0.5, 0.0), HIST_BINS - 1.0)
                lo = int(np.floor(pos))
                want[f, c, lo] += 1 - (pos - lo)
                want[f, c, min(lo + 1, HIST_BINS - 1)] += pos - lo
            want[f, c] /= len(vals)
    np.testing.assert_allclose(colour_histograms(frames), want.reshape(3, -1), rtol=0, atol=1e-12)
