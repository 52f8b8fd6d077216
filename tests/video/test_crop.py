"""Face crops: geometry, the torch reference on known patterns, NaN / out-of-frame boxes,
DALI (CPU here, GPU when present) against the reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from affaccel.video.crop import (
    crop_faces,
    crop_faces_dali,
    crop_faces_ref,
    square_boxes,
)
from affaccel.video.frames import CLIP_MEAN, CLIP_STD

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def _norm(hwc_uint8) -> torch.Tensor:
    """[H, W, 3] uint8 -> normalised [3, H, W] float32, by hand."""
    x = torch.as_tensor(np.ascontiguousarray(hwc_uint8)).permute(2, 0, 1).float() / 255
    return (x - MEAN) / STD


def _coded_frames(b=4, h=90, w=120):
    """Frames whose pixel values encode their coordinates (any misplacement shows)."""
    yy, xx = np.mgrid[0:h, 0:w]
    f = np.stack([xx * 2 % 256, yy * 2 % 256, (xx + 3 * yy) % 256], -1).astype(np.uint8)
    return np.stack([np.roll(f, k, axis=1) for k in range(b)])


def test_square_boxes_geometry():
    x0, y0, side, valid = square_boxes([[10, 20, 30, 50], [0, 0, 10, 10], [np.nan, 0, 1, 1],
                                        [5, 5, 0, 10]], expand=1.2)
    assert valid.tolist() == [True, True, False, False]
    assert side.tolist() == [60, 12, 1, 1]                  # max(w, h) * expand, rounded
    assert (x0[0], y0[0]) == (-5, 15)                       # centred on (25, 45)
    assert (x0[1], y0[1]) == (-1, -1)
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        square_boxes(np.zeros((3, 3)))


def test_reference_exact_crop_without_resize():
    frames = _coded_frames()
    boxes = np.array([[10, 20, 32, 32], [50, 10, 32, 20], [0, 0, 32, 32], [88, 58, 32, 32]], float)
    crops, valid = crop_faces_ref(frames, boxes, 32)
    assert crops.shape == (4, 3, 32, 32) and crops.dtype == torch.float32 and valid.all()
    torch.testing.assert_close(crops[0], _norm(frames[0, 20:52, 10:42]))
    torch.testing.assert_close(crops[1], _norm(frames[1, 4:36, 50:82]))  # squared about its centre
    torch.testing.assert_close(crops[2], _norm(frames[2, 0:32, 0:32]))
    torch.testing.assert_close(crops[3], _norm(frames[3, 58:90, 88:120]))


def test_reference_resize_of_constant_and_checker():
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    frames[0, 16:48, 16:48] = (200, 100, 50)               # constant 32x32 block
    frames[1, 16:48, 16:48] = ((np.add.outer(np.arange(32), np.arange(32)) // 8) % 2 * 255
                               )[..., None].astype(np.uint8)  # 8-pixel checker
    crops, _ = crop_faces_ref(frames, [[16, 16, 32, 32]] * 2, 64)  # 2x upsampling
    want = _norm(np.full((1, 1, 3), (200, 100, 50), np.uint8)).expand(3, 64, 64)
    torch.testing.assert_close(crops[0], want)
    # 2x upsampling keeps the checker's cells: the centre of each 16-pixel cell is unchanged
    cells = crops[1][:, 4::16, 4::16][:, :, :]
    src = _norm(frames[1, 16:48, 16:48])[:, 2::8, 2::8]
    torch.testing.assert_close(cells, src)
    # 2x downsampling of the constant block is the constant
    small, _ = crop_faces_ref(frames[:1], [[16, 16, 32, 32]], 16)
    torch.testing.assert_close(small[0], want[:, :16, :16])


def test_no_face_rows_are_zero_and_invalid():
    frames = _coded_frames()
    boxes = torch.tensor([[10, 10, 20, 20], [float("nan")] * 4, [5, 5, float("nan"), 5],
                          [5, 5, -3, 10]], dtype=torch.float32)
    for fn in (crop_faces_ref, crop_faces_dali):
        crops = torch.full((4, 3, 24, 24), float("nan"))
        crops, valid = fn(torch.from_numpy(frames), boxes, 24)
        assert valid.tolist() == [True, False, False, False]
        assert (crops[1:] == 0).all() and torch.isfinite(crops).all()


def test_out_of_frame_pixels_are_black():
    frames = _coded_frames(b=2)
    # half outside the left/top edge; entirely outside the frame
    crops, valid = crop_faces_ref(frames, [[-16, -8, 32, 32], [500, 500, 20, 20]], 32)
    black = _norm(np.zeros((1, 1, 3), np.uint8))
    assert valid.tolist() == [True, True]                 # a box was given: valid, but black
    torch.testing.assert_close(crops[0, :, :8, :], black.expand(3, 8, 32))
    torch.testing.assert_close(crops[0, :, :, :16], black.expand(3, 32, 16))
    torch.testing.assert_close(crops[0, :, 8:, 16:], _norm(frames[0, 0:24, 0:16]))
    torch.testing.assert_close(crops[1], black.expand(3, 32, 32))


def test_expand_and_inputs_agree():
    frames = _coded_frames()
    boxes = np.array([[30, 20, 20, 24]] * 4, float)
    a, _ = crop_faces_ref(frames, boxes, 40, expand=1.25)   # side round(24 * 1.25) = 30
    b, _ = crop_faces_ref(torch.from_numpy(frames), torch.from_numpy(boxes), 40, expand=1.25)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    direct, _ = crop_faces_ref(frames, [[25, 17, 30, 30]] * 4, 40)
    torch.testing.assert_close(a, direct, rtol=0, atol=0)
    with pytest.raises(ValueError, match="rows"):
        crop_faces_ref(frames, boxes[:2], 40)
    with pytest.raises(ValueError, match="uint8"):
        crop_faces_ref(frames.astype(np.float32), boxes, 40)


def _random_case(seed=0, b=9, h=120, w=160):
    from _video_media import pattern_frame

    rng = np.random.default_rng(seed)
    frames = np.stack([pattern_frame(i, h, w) for i in range(b)])
    xy = rng.uniform(-30, 140, (b, 2))
    wh = rng.uniform(12, 90, (b, 2))
    boxes = np.concatenate([xy, wh], 1)
    boxes[b // 2] = np.nan
    return frames, boxes


# Same geometry, only the bilinear filters differ. Measured max |diff| DALI-CPU vs reference
# (normalised units; one level ~ 0.015) on this smooth content: 1.2e-5 when upsampling to 112,
# 0.0077 when downsampling to 32 (pixel noise, the worst case for filters, reaches ~0.3).
@pytest.mark.parametrize("size,max_tol,mean_tol", [(112, 1e-3, 1e-4), (32, 0.05, 0.002)])
def test_dali_cpu_matches_reference(size, max_tol, mean_tol):
    frames, boxes = _random_case()
    ref, v_ref = crop_faces_ref(frames, boxes, size, expand=1.1)
    got, v = crop_faces_dali(frames, boxes, size, expand=1.1, device="cpu")
    assert v.tolist() == v_ref.tolist() and got.shape == ref.shape
    diff = (got - ref).abs()
    print(f"DALI-CPU crop vs reference at {size}px: max {diff.max():.3g} mean {diff.mean():.3g}")
    assert diff.max() <= max_tol and diff.mean() <= mean_tol


def test_crop_faces_dispatch():
    frames, boxes = _random_case(b=3)
    a, _ = crop_faces(frames, boxes, 48, backend="reference")
    b, _ = crop_faces_ref(frames, boxes, 48)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    auto, _ = crop_faces(frames, boxes, 48)               # DALI on CPU when importable
    torch.testing.assert_close(auto, crop_faces_dali(frames, boxes, 48)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="backend"):
        crop_faces(frames, boxes, 48, backend="cv2")


@pytest.mark.gpu
@pytest.mark.parametrize("size", [224, 48])
def test_gpu_dali_matches_reference(dali, size):
    frames, boxes = _random_case(b=17)
    cuda_frames = torch.from_numpy(frames).cuda()
    got, v = crop_faces(cuda_frames, torch.from_numpy(boxes).cuda(), size, expand=1.2)
    assert got.is_cuda and v.is_cuda
    ref, v_ref = crop_faces_ref(frames, boxes, size, expand=1.2)
    assert v.cpu().tolist() == v_ref.tolist()
    diff = (got.cpu() - ref).abs()
    assert diff.max() <= 0.1 and diff.mean() <= 0.005
    # CPU frames with a CUDA target are uploaded
    got2, _ = crop_faces(frames, boxes, size, expand=1.2, device="cuda", backend="dali")
    torch.testing.assert_close(got2, got)


@pytest.mark.gpu
def test_gpu_torch_fallback_without_dali(monkeypatch):
    """Without DALI, crop_faces on CUDA frames runs the torch ops on the GPU (no host copy)."""
    import affaccel.video.decode as decode

    monkeypatch.setattr(decode, "dali_available", lambda: False)
    frames, boxes = _random_case(b=9)
    got, v = crop_faces(torch.from_numpy(frames).cuda(), boxes, 64, expand=1.2)
    assert got.is_cuda and v.is_cuda
    ref, v_ref = crop_faces_ref(frames, boxes, 64, expand=1.2)
    assert v.cpu().tolist() == v_ref.tolist()
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-5, atol=1e-4)


def test_auto_without_dali_takes_the_reference_on_the_frames_device(monkeypatch):
    import affaccel.video.crop as crop_mod
    import affaccel.video.decode as decode

    calls = []
    monkeypatch.setattr(decode, "dali_available", lambda: False)
    monkeypatch.setattr(crop_mod, "crop_faces_dali", lambda *a, **k: calls.append("dali"))
    frames, boxes = _random_case(b=3)
    got, _ = crop_faces(torch.from_numpy(frames), boxes, 32)
    assert calls == [] and got.device.type == "cpu"
    torch.testing.assert_close(got, crop_faces_ref(frames, boxes, 32)[0], rtol=0, atol=0)
