"""Tracker logic with a scripted detector (known boxes per frame), then with the real one."""
import numpy as np
import pytest

from affaccel.faces.tracker import FaceTracker, TrackerConfig

FRAMES = np.zeros((1, 100, 200, 3), np.uint8)   # content unused by the scripted detector


class Scripted:
    """Returns the detections listed for each call, in order; records how often it ran."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def detect(self, frames):
        out = []
        for _ in range(len(frames)):
            out.append(np.asarray(self.script[self.calls], np.float64).reshape(-1, 5))
            self.calls += 1
        return out


def _run(tracker, n):
    return tracker.track([np.repeat(FRAMES, 1, 0) for _ in range(n)])


def test_smoothing_holds_and_drops():
    det = Scripted([[[10, 10, 20, 20, 5]], [[20, 10, 20, 20, 6]], [], [], []])
    tr = FaceTracker(det, smoothing=0.5, max_missed=1)
    out = _run(tr, 5)
    np.testing.assert_allclose(out.boxes[0], [10, 10, 20, 20])
    np.testing.assert_allclose(out.boxes[1], [15, 10, 20, 20])     # EMA halfway
    np.testing.assert_allclose(out.boxes[2], [15, 10, 20, 20])     # one miss: held
    assert np.isnan(out.boxes[3:]).all()                           # second miss: dropped
    assert out.ids[:3].tolist() == [0, 0, 0] and out.ids[3:].tolist() == [-1, -1]
    assert out.scores[1] == 6


def test_redetect_every_n_frames_holds_box_in_between():
    det = Scripted([[[10, 10, 20, 20, 5]], [[12, 10, 20, 20, 5]], [[14, 10, 20, 20, 5]]])
    tr = FaceTracker(det, redetect_every=3, smoothing=1.0)
    out = tr.track([np.repeat(FRAMES, 4, 0), np.repeat(FRAMES, 3, 0)])   # frames 0..6
    assert det.calls == 3 and out.detected.tolist() == [1, 0, 0, 1, 0, 0, 1]
    assert out.boxes[:3, 0].tolist() == [10] * 3 and out.boxes[3:6, 0].tolist() == [12] * 3
    assert out.boxes[6, 0] == 14


def test_subject_is_kept_when_a_larger_face_appears():
    small, big = [80, 30, 20, 20, 3], [0, 0, 60, 60, 3]
    det = Scripted([[small], [small, big], [big, small]])
    out = _run(FaceTracker(det, smoothing=1.0), 3)
    assert out.ids.tolist() == [0, 0, 0]
    np.testing.assert_allclose(out.boxes[:, 0], [80, 80, 80])


def test_largest_versus_central_and_face_id():
    centre, big = [90, 40, 20, 20, 3], [0, 0, 50, 50, 3]
    out = _run(FaceTracker(Scripted([[centre, big]] * 2)), 2)
    np.testing.assert_allclose(out.boxes[0], big[:4])
    out = _run(FaceTracker(Scripted([[centre, big]] * 2), select="central"), 2)
    np.testing.assert_allclose(out.boxes[0], centre[:4])
    # ids are given in detection order: the central face is track 0, the big one track 1
    out = _run(FaceTracker(Scripted([[centre, big]] * 2), face_id=0), 2)
    assert out.ids.tolist() == [0, 0]
    np.testing.assert_allclose(out.boxes[1], centre[:4])


def test_subject_switches_only_after_it_is_lost():
    a, b = [0, 0, 30, 30, 3], [120, 0, 20, 20, 3]
    det = Scripted([[a, b], [b], [b], [a, b]])
    out = _run(FaceTracker(det, smoothing=1.0, max_missed=0), 4)
    assert out.ids.tolist() == [0, 1, 1, 1]      # a lost at frame 1; b kept after a returns


@pytest.mark.parametrize("kw, msg", [({"redetect_every": 0}, "redetect_every"),
                                     ({"smoothing": 0}, "smoothing"),
                                     ({"select": "left"}, "select"),
                                     ({"max_missed": -1}, "max_missed")])
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrackerConfig(**kw)


def test_real_detector_follows_a_moving_face():
    from matplotlib import cbook
    from PIL import Image

    from affaccel.faces.boxes import box_iou
    from affaccel.faces.detector import HaarFaceDetector

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        face = np.asarray(Image.open(f).convert("RGB").resize((128, 150)))
    frames = np.full((6, 240, 400, 3), 90, np.uint8)
    truth = []
    for i in range(6):                                     # slide the portrait 30 px a frame
        x = 20 + 30 * i
        frames[i, 40:190, x:x + 128] = face
        truth.append([x + 40, 40 + 27.5, 55, 55])          # face box scaled from 512x600
    out = FaceTracker(HaarFaceDetector(box_scale=1.0, box_shift_y=0.0), smoothing=1.0).track([frames[:3], frames[3:]])
    assert (out.ids == 0).all()
    assert np.nanmin(box_iou(out.boxes, truth)) > 0.5
