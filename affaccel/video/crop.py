"""Face boxes of decoded frames -> normalised square crops for the CLIP encoder.

One geometry for every backend (:func:`square_boxes`):
1. the box (x, y, w, h in pixels) is made square about its centre, side = max(w, h) * expand;
2. its corner and side are rounded to whole pixels (a crop never straddles pixel centres,
   so the backends agree exactly on what they cut);
3. pixels of the square that fall outside the frame are zeros (black), so a face at the edge
   keeps its position and scale in the crop instead of being stretched;
4. the square is resized to image_size x image_size (bilinear, antialiased when shrinking),
   scaled to 0..1 and normalised with mean/std, laid out CHW.
Rows whose box has a NaN, or a width or height <= 0, are "no face": their output is all zeros
and their ``valid`` flag False.

Backends: :func:`crop_faces_ref` (torch, any device; the reference and the CPU path) and a DALI
pipeline (``external_source`` -> ``slice`` with zero padding -> ``resize`` ->
``crop_mirror_normalize``) that runs on GPU (and on CPU, for testing against the reference).
"""
from __future__ import annotations

import numpy as np

from .frames import CLIP_MEAN, CLIP_STD


def square_boxes(boxes, expand: float = 1.0):
    """Integer square crop regions of face boxes.

    boxes: [B, 4] float (x, y, w, h) in pixels. Returns (x0 [B] int64, y0 [B] int64,
    side [B] int64 >= 1, valid [B] bool); invalid rows get (0, 0, 1).
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape [B, 4] (x, y, w, h), got {b.shape}")
    if not expand > 0:
        raise ValueError(f"expand must be > 0, got {expand}")
    valid = np.isfinite(b).all(axis=1) & (b[:, 2] > 0) & (b[:, 3] > 0)
    safe = np.where(valid[:, None], b, np.array([0.0, 0.0, 1.0, 1.0]))
    cx, cy = safe[:, 0] + safe[:, 2] / 2, safe[:, 1] + safe[:, 3] / 2
    side = np.maximum(safe[:, 2], safe[:, 3]) * expand
    side_i = np.maximum(1, np.round(side)).astype(np.int64)
    x0 = np.round(cx - side_i / 2).astype(np.int64)
    y0 = np.round(cy - side_i / 2).astype(np.int64)
    x0[~valid], y0[~valid], side_i[~valid] = 0, 0, 1
    return x0, y0, side_i, valid


def _as_torch_frames(frames):
    import torch

    f = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
    if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != torch.uint8:
        raise ValueError(f"frames must be [B, H, W, 3] uint8, got {tuple(f.shape)} {f.dtype}")
    return f


def _check_rows(frames, boxes):
    if len(boxes) != frames.shape[0]:
        raise ValueError(f"boxes has {len(boxes)} rows, frames has {frames.shape[0]}")


def _boxes_np(boxes):
    import torch

    if isinstance(boxes, torch.Tensor):
        return boxes.detach().to("cpu", torch.float64).numpy()
    return np.asarray(boxes, dtype=np.float64)


def crop_faces_ref(frames, boxes, image_size: int, mean=CLIP_MEAN, std=CLIP_STD,
                   expand: float = 1.0, device=None):
    """Reference crop (torch, per box), on ``device`` (default: the frames' device).

    frames: [B, H, W, 3] uint8 (NumPy or torch); boxes: [B, 4] (x, y, w, h) pixels, NaN = none.
    Returns (crops [B, 3, S, S] float32, valid [B] bool).
    """
    import torch
    import torch.nn.functional as F

    frames = _as_torch_frames(frames)
    boxes = _boxes_np(boxes)
    _check_rows(frames, boxes)
    device = torch.device(device) if device is not None else frames.device
    frames = frames.to(device)
    x0, y0, side, valid = square_boxes(boxes, expand)
    B, H, W, _ = frames.shape
    S = int(image_size)
    out = torch.zeros((B, 3, S, S), dtype=torch.float32, device=device)  # 0..255 scale
    for i in np.flatnonzero(valid):
        n = int(side[i])
        sq = torch.zeros((n, n, 3), dtype=torch.uint8, device=device)  # zero padding
        # the part of the square inside the frame
        fx0, fy0 = max(0, x0[i]), max(0, y0[i])
        fx1, fy1 = min(W, x0[i] + n), min(H, y0[i] + n)
        if fx1 > fx0 and fy1 > fy0:
            sq[fy0 - y0[i]:fy1 - y0[i], fx0 - x0[i]:fx1 - x0[i]] = frames[i, fy0:fy1, fx0:fx1]
        img = sq.permute(2, 0, 1)[None].float()
        if n != S:
            img = F.interpolate(img, size=(S, S), mode="bilinear", align_corners=False,
                                antialias=n > S)
        out[i] = img[0]
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    valid_t = torch.from_numpy(valid).to(device)
    out = (out / 255.0 - m) / s
    out[~valid_t] = 0.0
    return out, valid_t


# ---------------------------------------------------------------------------------------------
# DALI

_PIPES: dict = {}


def _dali_pipe(image_size, mean, std, device, device_id, max_batch, num_threads=2):
    key = (image_size, tuple(mean), tuple(std), device, device_id, max_batch, num_threads)
    if key in _PIPES:
        return _PIPES[key]
    from nvidia.dali import fn, pipeline_def, types

    on_gpu = device != "cpu"

    @pipeline_def(batch_size=max_batch, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=1)
    def pipe():
        frames = fn.external_source(name="frames", device="gpu" if on_gpu else "cpu",
                                    layout="HWC", dtype=types.UINT8)
        anchor = fn.external_source(name="anchor", dtype=types.FLOAT)  # [x0, y0]
        shape = fn.external_source(name="shape", dtype=types.FLOAT)    # [side, side]
        sq = fn.slice(frames, anchor, shape, axis_names="WH", normalized_anchor=False,
                      normalized_shape=False, out_of_bounds_policy="pad", fill_values=0)
        # float output: no uint8 rounding between resize and normalisation (as the reference)
        sq = fn.resize(sq, size=[image_size, image_size], dtype=types.FLOAT)
        return fn.crop_mirror_normalize(sq, dtype=types.FLOAT, output_layout="CHW",
                                        mean=[255.0 * v for v in mean],
                                        std=[255.0 * v for v in std])

    p = pipe()
    p.build()
    if len(_PIPES) > 8:  # a handful of configurations per process; don't grow without bound
        _PIPES.clear()
    _PIPES[key] = p
    return p


def crop_faces_dali(frames, boxes, image_size: int, mean=CLIP_MEAN, std=CLIP_STD,
                    expand: float = 1.0, device=None, num_threads: int = 2):
    """DALI crop: same contract and geometry as :func:`crop_faces_ref`.

    device "cuda[:N]" runs the slice/resize/normalise on that GPU (frames are uploaded when
    they are on the CPU); "cpu" runs DALI's CPU operators.
    """
    import torch

    frames = _as_torch_frames(frames)
    boxes = _boxes_np(boxes)
    _check_rows(frames, boxes)
    device = torch.device(device) if device is not None else frames.device
    x0, y0, side, valid = square_boxes(boxes, expand)
    B = frames.shape[0]
    S = int(image_size)
    if B == 0:
        return (torch.zeros((0, 3, S, S), device=device), torch.zeros(0, dtype=torch.bool,
                                                                      device=device))
    max_batch = max(64, 1 << (B - 1).bit_length())  # power of two: few rebuilt pipelines
    if device.type == "cuda":
        device_id = device.index if device.index is not None else torch.cuda.current_device()
        frames = frames.to(device).contiguous()
        dev_key = f"cuda:{device_id}"
    else:
        device_id = None
        frames = frames.cpu().contiguous()
        dev_key = "cpu"
    pipe = _dali_pipe(S, tuple(mean), tuple(std), dev_key, device_id, max_batch)
    anchor = [np.array([x0[i], y0[i]], np.float32) for i in range(B)]
    shape = [np.array([side[i], side[i]], np.float32) for i in range(B)]
    if device.type == "cuda":
        stream = torch.cuda.current_stream(device)
        pipe.feed_input("frames", frames, layout="HWC", cuda_stream=stream.cuda_stream)
    else:
        pipe.feed_input("frames", frames.numpy(), layout="HWC")
    pipe.feed_input("anchor", anchor)
    pipe.feed_input("shape", shape)
    (out,) = pipe.run()
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        crops = torch.empty((B, 3, S, S), dtype=torch.float32, device=device)
        feed_ndarray(out.as_tensor(), crops, cuda_stream=torch.cuda.current_stream(device))
    else:
        crops = torch.from_numpy(np.array(out.as_tensor()))
    valid_t = torch.from_numpy(valid).to(device)
    crops[~valid_t] = 0.0
    return crops, valid_t


def crop_faces(frames, boxes, image_size: int, mean=CLIP_MEAN, std=CLIP_STD,
               expand: float = 1.0, device=None, backend: str = "auto"):
    """Square face crops, resized and normalised for CLIP.

    frames: [B, H, W, 3] uint8 (NumPy or torch, CPU or CUDA); boxes: [B, 4] float
    (x, y, w, h) pixels, a NaN row = no face. expand scales the box about its centre.
    Returns (crops [B, 3, S, S] float32 on ``device``, valid [B] bool); invalid rows are zeros.
    backend "auto": DALI when importable (on CPU too: measured ~3x faster than the torch
    reference there, bench/bench_video.py), the torch reference otherwise.
    """
    import torch

    if backend not in ("auto", "dali", "reference"):
        raise ValueError(f"backend must be 'auto', 'dali' or 'reference', got {backend!r}")
    if device is None:
        device = frames.device if isinstance(frames, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    if backend == "auto":
        from .decode import dali_available

        backend = "dali" if dali_available() else "reference"
    if backend == "dali":
        return crop_faces_dali(frames, boxes, image_size, mean, std, expand, device)
    return crop_faces_ref(frames, boxes, image_size, mean, std, expand, device)
