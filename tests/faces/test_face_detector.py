"""The built-in Haar detector on a real photograph shipped with matplotlib."""
import numpy as np
import pytest

from affaccel.faces.boxes import box_iou
from affaccel.faces.detector import HaarFaceDetector


@pytest.fixture(scope="module")
def photo():
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:   # 512x600 portrait, one face
        return np.array(Image.open(f).convert("RGB"))


@pytest.fixture(scope="module")
def detector():
    return HaarFaceDetector(box_scale=1.0, box_shift_y=0.0)    # the cascade's tight boxes


def test_finds_the_face_in_a_portrait(photo, detector):
    dets = detector.detect(photo[None])
    assert len(dets) == 1 and dets[0].shape[1] == 5
    assert len(dets[0]) >= 1
    # hand-labelled face box of grace_hopper.jpg (x, y, w, h)
    assert box_iou(dets[0][:1, :4], [[160, 110, 220, 220]])[0] > 0.6
    assert dets[0][0, 4] >= detector.config.min_neighbors


def test_batch_equals_single_frames_and_boxes_scale_with_the_frame(photo, detector):
    small = photo[::2, ::2].copy()
    batch = detector.detect(np.stack([photo, photo]))
    np.testing.assert_array_equal(batch[0], batch[1])
    np.testing.assert_array_equal(batch[0], detector.detect_one(photo))
    half = detector.detect_one(small)
    assert box_iou(half[:1, :4] * 2, batch[0][:1, :4])[0] > 0.8


def test_no_face_in_noise_or_flat_frames(detector):
    rng = np.random.default_rng(0)
    frames = np.stack([rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
                       np.full((240, 320, 3), 128, np.uint8)])
    assert [len(d) for d in detector.detect(frames)] == [0, 0]


def test_bad_input_is_rejected(detector):
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\] uint8"):
        detector.detect(np.zeros((2, 10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="cascade 'nope'"):
        HaarFaceDetector(cascade="nope")
    with pytest.raises(ValueError, match="unknown option"):
        HaarFaceDetector(colour=True)


def test_accepts_torch_tensors(photo, detector):
    import torch

    np.testing.assert_array_equal(detector.detect(torch.from_numpy(photo[None]))[0],
                                  detector.detect_one(photo))


def test_crop_convention_boxes_are_scaled_and_shifted_tight_boxes(photo, detector):
    from affaccel.faces.detector import to_crop_boxes

    tight = detector.detect_one(photo)
    crop = HaarFaceDetector(box_scale=1.5, box_shift_y=-0.1).detect_one(photo)
    np.testing.assert_allclose(crop[:, :4], to_crop_boxes(tight[:, :4], 1.5, -0.1))
    x, y, w, h = tight[0, :4]
    np.testing.assert_allclose(crop[0, :4], [x - w / 4, y - h / 4 - 0.1 * w, 1.5 * w, 1.5 * h])
