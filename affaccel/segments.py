"""The window engine: per-frame features -> overlapping windows -> per-frame predictions.

A video of T frames is cut into windows of ``window`` frames (w, default 300) every ``stride``
frames (s, default 200) by :func:`plan_windows`; a model sees windows ``[N, w, D]`` plus a mask
``[N, w]`` (False on zero padding), and :func:`overlap_average` turns its window predictions
``[N, w, K]`` back into one prediction per frame ``[T, K]``, each frame the (weighted) mean over
every window that covers it.

Fast paths run in the C++ extension ``affaccel._C`` (GIL released, ``AFFACCEL_NUM_THREADS``
threads); each has a short NumPy reference ``*_ref`` beside it that is also the fallback when
the extension is missing or disabled (``AFFACCEL_DISABLE_EXT=1``).

Inputs are NumPy arrays (memory maps included) or CPU torch tensors, read in place: any strides,
no copy. NumPy in gives NumPy out; torch in gives torch out. Window assembly copies bytes, so
float32, float16 and bfloat16 (torch's bfloat16 travels as raw 16-bit words) keep their dtype.
CUDA tensors, and tensors that require grad, take the torch implementations
(``*_torch``: ``unfold`` / ``index_add_``), which are differentiable.

Each public function first hands its arguments straight to the engine, which checks every
shape, dtype and index itself (O(windows) work, none per frame in Python); only when the engine
refuses a call (or is absent) does the Python code below run its own checks, which raise the
worded ValueError, or take the general path (other dtypes, lists, torch tensors). So a call
costs a few microseconds plus its work.

Importing this module imports NumPy only; torch is imported when a torch path runs.
"""
from __future__ import annotations

import operator
import sys
from typing import Any, Sequence

import numpy as np

from . import _ext, env

__all__ = [
    "plan_windows", "plan_windows_batch", "assemble_windows", "assemble_windows_batch", "gather_windows",
    "overlap_average", "overlap_average_batch", "window_weights",
    "plan_windows_ref", "assemble_windows_ref", "assemble_windows_batch_ref",
    "gather_windows_ref", "overlap_average_ref", "overlap_average_batch_ref",
    "assemble_windows_torch", "overlap_average_torch", "parallel_threshold", "set_parallel_threshold",
]

WEIGHTINGS = ("uniform", "triangular", "hann")

# ----------------------------------------------------------------------------- validation


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _check_window_stride(window: Any, stride: Any) -> tuple[int, int]:
    w, s = _int(window, "window"), _int(stride, "stride")
    if w <= 0:
        raise ValueError(f"window must be > 0, got {w}")
    if s <= 0:
        raise ValueError(f"stride must be > 0, got {s}")
    if s > w:
        raise ValueError(f"stride must be <= window (frames would be skipped), got stride={s} "
                         f"> window={w}")
    return w, s


def _check_window(window: Any) -> int:
    w = _int(window, "window")
    if w <= 0:
        raise ValueError(f"window must be > 0, got {w}")
    return w


def _check_n_frames(n_frames: Any, name: str = "n_frames") -> int:
    n = _int(n_frames, name)
    if n <= 0:
        raise ValueError(f"{name} must be > 0, got {n}")
    return n


def _int_array(x: Any, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(x)
    if a.size == 0 and a.dtype.kind == "f":  # np.asarray([]) is float64
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.int64)


# ----------------------------------------------------------------- NumPy / torch plumbing


def _torch_tensor_type():
    # Only look torch up if the caller already imported it: a NumPy user never pays for torch.
    torch = sys.modules.get("torch")
    return torch.Tensor if torch is not None else None


def _is_torch(x: Any) -> bool:
    t = _torch_tensor_type()
    return t is not None and isinstance(x, t)


def _torch_raw(t) -> np.ndarray:
    """Zero-copy NumPy view of a CPU tensor; bfloat16 is viewed as int16 (raw bits)."""
    import torch

    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy()


def _raw_to_torch(a: np.ndarray, dtype):
    """Inverse of _torch_raw for an array we allocated (shares memory)."""
    import torch

    t = torch.from_numpy(a)
    return t.view(dtype) if dtype == torch.bfloat16 else t


def _features_array(x: Any, name: str) -> tuple[np.ndarray, Any]:
    """(array [T, D], torch dtype or None). Raises ValueError for a bad shape or dtype."""
    torch_dtype = None
    if _is_torch(x):
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU tensor here, got device {x.device}")
        torch_dtype = x.dtype
        a = _torch_raw(x)
    elif isinstance(x, np.ndarray):
        a = x
    else:
        a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [T, D], got shape {tuple(a.shape)}")
    if a.dtype.kind not in "fiubc":
        raise ValueError(f"{name} must hold numbers, got dtype {a.dtype}")
    if a.shape[0] <= 0:
        raise ValueError(f"{name} must have at least one frame (n_frames must be > 0)")
    return a, torch_dtype


def _bf16_bits_to_float32(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _preds_array(x: Any) -> tuple[np.ndarray, str]:
    """(array [N, w, K], kind) with kind in float32/float16/bfloat16 (raw 16-bit words).

    Other dtypes (float64, integers) are converted to float32 once.
    """
    if _is_torch(x):
        import torch

        if x.device.type != "cpu":
            raise ValueError(f"window_preds must be a CPU tensor here, got device {x.device}")
        kind = {torch.float32: "float32", torch.float16: "float16",
                torch.bfloat16: "bfloat16"}.get(x.dtype)
        a = _torch_raw(x) if kind else x.detach().float().numpy()
        kind = kind or "float32"
    else:
        a = np.asarray(x)
        if a.dtype.kind not in "fiub":
            raise ValueError(f"window_preds must hold numbers, got dtype {a.dtype}")
        if a.dtype == np.float16 and a.dtype.isnative:
            kind = "float16"
        else:
            a = a if (a.dtype == np.float32 and a.dtype.isnative) else a.astype(np.float32)
            kind = "float32"
    if a.ndim != 3:
        raise ValueError(f"window_preds must be 3-D [N, window, K], got shape {tuple(a.shape)}")
    if a.shape[1] <= 0:
        raise ValueError("window_preds.shape[1] (the window) must be > 0")
    return a, kind


def _preds_float(a: np.ndarray, kind: str) -> np.ndarray:
    return _bf16_bits_to_float32(a) if kind == "bfloat16" else a


def _use_ext() -> bool:
    return _ext.available()


# Engine refusals: the slow path then checks again and raises the worded error (or handles it).
_REFUSED = (ValueError, TypeError)
_NAMED_WEIGHTS: dict = {}  # (window, name) -> read-only float32 weights (all but uniform)


def _fast_weights(window: int, weighting: Any):
    """Weights for the engine: None for uniform, a cached array for a named weighting, False
    for anything else (an array is checked by window_weights on the general path)."""
    if not isinstance(weighting, str):
        return False
    if weighting == "uniform":
        return None
    key = (window, weighting)
    wts = _NAMED_WEIGHTS.get(key)
    if wts is None:
        if weighting not in WEIGHTINGS:
            return False
        if len(_NAMED_WEIGHTS) >= 64:
            _NAMED_WEIGHTS.clear()
        wts = window_weights(window, weighting)
        wts.flags.writeable = False
        _NAMED_WEIGHTS[key] = wts
    return wts


def _engine_torch_in(x: Any):
    """(raw NumPy view, torch dtype) of a CPU tensor the engine reads; None otherwise."""
    if not _is_torch(x) or x.device.type != "cpu" or x.requires_grad:
        return None
    return _torch_raw(x), x.dtype


def _torch_windows(windows: np.ndarray, mask: np.ndarray, dtype):
    import torch

    return _raw_to_torch(windows, dtype), torch.from_numpy(mask)


def parallel_threshold() -> int:
    """Bytes of work per thread from which the C++ engine uses its thread pool (below, a call
    runs on the calling thread alone). Needs the extension."""
    return _ext.load().parallel_min_bytes()


def set_parallel_threshold(nbytes: int) -> int:
    """Set :func:`parallel_threshold` for this process (0: the pool whenever a call has two
    work items; a huge value: never); returns the previous value. The default was measured on
    a 2-core machine (docs/segments.md); ``AFFACCEL_NUM_THREADS`` still caps the thread count."""
    n = _int(nbytes, "nbytes")
    if n < 0:
        raise ValueError(f"nbytes must be >= 0, got {n}")
    C = _ext.load()
    old = C.parallel_min_bytes()
    C.set_parallel_min_bytes(n)
    return old


# ------------------------------------------------------------------------------- planning


def plan_windows_ref(n_frames: int, window: int = 300, stride: int = 200) -> np.ndarray:
    """Window starts by the DESIGN.md rule, as a plain loop (the reference)."""
    n = _check_n_frames(n_frames)
    w, s = _check_window_stride(window, stride)
    starts, start = [], 0
    while start + w <= n:
        starts.append(start)
        start += s
    if not starts or starts[-1] + w < n:  # one more window, ending exactly at the last frame
        starts.append(max(n - w, 0))
    return np.asarray(starts, dtype=np.int64)


def plan_windows(n_frames: int, window: int = 300, stride: int = 200) -> np.ndarray:
    """Start frames of the windows covering a video of ``n_frames`` frames: ``[N]`` int64.

    Starts are 0, s, 2s, ... while a whole window fits; if the last of them does not reach the
    final frame, one more window ends exactly at it. A video shorter than ``window`` is one
    window, padded. Every frame is covered and no window is empty.
    """
    n = _check_n_frames(n_frames)
    w, s = _check_window_stride(window, stride)
    if n <= w:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n - w + 1, s, dtype=np.int64)
    if starts[-1] + w < n:
        starts = np.append(starts, np.int64(n - w))
    return starts


def window_weights(window: int, weighting: Any = "uniform") -> np.ndarray:
    """Per-position weights ``[window]`` float32, all > 0, for averaging overlapping windows.

    ``"uniform"``: ones. ``"triangular"`` / ``"hann"``: peak in the middle, small at the edges
    (edge frames see less context); both are taken over ``window + 2`` points with the zero end
    points dropped, so every position keeps a positive weight and every frame stays covered.
    An array of ``window`` positive finite numbers is used as given.
    """
    w = _check_window(window)
    if isinstance(weighting, str):
        if weighting == "uniform":
            return np.ones(w, dtype=np.float32)
        if weighting == "triangular":
            return np.bartlett(w + 2)[1:-1].astype(np.float32)
        if weighting == "hann":
            return np.hanning(w + 2)[1:-1].astype(np.float32)
        raise ValueError(f"weighting must be one of {WEIGHTINGS} or an array, got {weighting!r}")
    a = np.asarray(_torch_raw(weighting) if _is_torch(weighting) else weighting, dtype=np.float32)
    if a.shape != (w,):
        raise ValueError(f"weighting array must have shape ({w},), got {a.shape}")
    if not (np.all(np.isfinite(a)) and np.all(a > 0)):
        raise ValueError("weighting array must be finite and > 0 at every position")
    return np.ascontiguousarray(a)


# ------------------------------------------------------------------------------- assembly


def gather_windows_ref(features: Sequence[Any], index: Any, window: int):
    """Reference of :func:`gather_windows` on NumPy arrays: a loop over the index rows."""
    w = _check_window(window)
    feats = [np.asarray(f) for f in features]
    idx = _check_index(index, [f.shape[0] for f in feats])
    out = np.zeros((len(idx), w, feats[0].shape[1]), dtype=feats[0].dtype)
    mask = np.zeros((len(idx), w), dtype=bool)
    for b, (v, s) in enumerate(idx):
        n = min(w, feats[v].shape[0] - s)
        out[b, :n] = feats[v][s:s + n]
        mask[b, :n] = True
    return out, mask


def assemble_windows_batch_ref(features: Sequence[Any], window: int = 300, stride: int = 200):
    """Reference of :func:`assemble_windows_batch` (list form) on NumPy arrays."""
    w, s = _check_window_stride(window, stride)
    feats = [np.asarray(f) for f in features]
    index = np.asarray([(v, st) for v, f in enumerate(feats)
                        for st in plan_windows_ref(f.shape[0], w, s)], dtype=np.int64)
    return (*gather_windows_ref(feats, index, w), index)


def assemble_windows_ref(features: Any, window: int = 300, stride: int = 200):
    """Reference of :func:`assemble_windows` on a NumPy array ``[T, D]``."""
    windows, mask, _ = assemble_windows_batch_ref([features], window, stride)
    return windows, mask


def _check_index(index: Any, lengths: Sequence[int]) -> np.ndarray:
    """index as C-contiguous int64 [B, 2], every (video, start) inside its video."""
    if _is_torch(index):
        index = index.detach().cpu().numpy()
    a = np.asarray(index)
    idx = np.zeros((0, 2), np.int64) if a.size == 0 else _int_array(a, "index", 2)
    if idx.shape[1] != 2:
        raise ValueError(f"index must have shape [B, 2] (video, start), got {idx.shape}")
    if len(idx):
        v, s = idx[:, 0], idx[:, 1]
        bad = (v < 0) | (v >= len(lengths))
        if bad.any():
            b = int(np.argmax(bad))
            raise ValueError(f"index[{b}]: video {v[b]} out of range [0, {len(lengths)})")
        lens = np.asarray(lengths, dtype=np.int64)[v]
        bad = (s < 0) | (s >= lens)
        if bad.any():
            b = int(np.argmax(bad))
            raise ValueError(f"index[{b}]: start {s[b]} out of range [0, {lens[b]}) of video "
                             f"{v[b]}")
    return idx


def _features_list(features: Any, name: str = "features") -> tuple[list[np.ndarray], Any]:
    if _is_torch(features) or isinstance(features, np.ndarray):
        raise ValueError(f"{name} must be a list of [T_i, D] arrays (or pass offsets= for one "
                         f"concatenated array)")
    items = list(features)
    if not items:
        raise ValueError(f"{name} must hold at least one video")
    arrays, dtypes = [], set()
    for i, f in enumerate(items):
        a, tdt = _features_array(f, f"{name}[{i}]")
        arrays.append(a)
        dtypes.add((a.dtype, tdt))
    if len(dtypes) > 1:
        raise ValueError(f"{name}: every video must have the same dtype, got "
                         f"{sorted(str(t or d) for d, t in dtypes)}")
    d0 = arrays[0].shape[1]
    for i, a in enumerate(arrays):
        if a.shape[1] != d0:
            raise ValueError(f"{name}[{i}] has D={a.shape[1]}, expected D={d0} like {name}[0]")
    return arrays, next(iter(dtypes))[1]


def _gather(arrays: list[np.ndarray], idx: np.ndarray, w: int, torch_dtype: Any):
    """Allocate the outputs once (NumPy or torch) and fill them (C++ or reference)."""
    b, d = len(idx), arrays[0].shape[1]
    if torch_dtype is not None:
        import torch

        windows_t = torch.empty((b, w, d), dtype=torch_dtype)
        mask_t = torch.empty((b, w), dtype=torch.bool)
        out, mask = _torch_raw(windows_t), mask_t.numpy()
    else:
        out, mask = np.empty((b, w, d), dtype=arrays[0].dtype), np.empty((b, w), dtype=bool)
    if _use_ext():
        _ext.load().gather_windows(arrays, idx, w, out, mask, env.num_threads())
    else:
        out[...], mask[...] = gather_windows_ref(arrays, idx, w)
    if torch_dtype is not None:
        return windows_t, mask_t
    return out, mask


def gather_windows(features: Sequence[Any], index: Any, window: int = 300):
    """Assemble only the windows named by ``index`` (a shuffled training batch, say).

    features: list of ``[T_i, D]`` arrays or CPU tensors (``np.load(..., mmap_mode="r")``
    memory maps work and are read in place). index: ``[B, 2]`` int ``(video, start)`` rows,
    ``0 <= start < T_video``. Returns ``(windows [B, window, D], mask [B, window] bool)``;
    frames past the end of a video are zero with mask False.
    """
    if type(index) is np.ndarray and type(window) is int and type(features) in (list, tuple) \
            and _use_ext():
        try:
            return _ext.load().gather_windows(features, index, window)
        except _REFUSED:
            pass  # torch tensors, other index dtypes, or an error worded below
    w = _check_window(window)
    arrays, torch_dtype = _features_list(features)
    idx = _check_index(index, [a.shape[0] for a in arrays])
    return _gather(arrays, idx, w, torch_dtype)


def _plan_index(lengths: Sequence[int], w: int, s: int) -> np.ndarray:
    """plan_windows for every video at once: ``[N, 2]`` int64 ``(video, start)`` rows.

    Vectorized over videos (a loader plans a whole dataset); the tests check it against
    plan_windows_ref video by video.
    """
    n = np.asarray(lengths, dtype=np.int64)
    regular = np.where(n >= w, (n - w) // s + 1, 0)  # windows at 0, s, 2s, ... that fit
    tail = (regular == 0) | ((regular - 1) * s + w < n)  # one more, ending at the last frame
    counts = regular + tail
    videos = np.repeat(np.arange(len(n), dtype=np.int64), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)  # row of each video's first window
    k = np.arange(len(videos), dtype=np.int64) - first  # window number within its video
    starts = k * s
    is_tail = k == regular[videos]
    starts[is_tail] = np.maximum(n[videos[is_tail]] - w, 0)
    return np.stack([videos, starts], axis=1)


def _split_offsets(features: Any, offsets: Any) -> tuple[list[np.ndarray], Any]:
    a, tdt = _features_array(features, "features")
    off = _int_array(offsets, "offsets", 1)
    if len(off) < 2:
        raise ValueError(f"offsets must have V + 1 >= 2 entries, got {len(off)}")
    if off[0] != 0 or off[-1] != a.shape[0]:
        raise ValueError(f"offsets must start at 0 and end at features.shape[0]={a.shape[0]}, "
                         f"got {off[0]} ... {off[-1]}")
    steps = np.diff(off)
    if (steps <= 0).any():
        v = int(np.argmax(steps <= 0))
        raise ValueError(f"offsets must be strictly increasing (every video needs >= 1 frame), "
                         f"got offsets[{v}]={off[v]} >= offsets[{v + 1}]={off[v + 1]}")
    return [a[off[v]:off[v + 1]] for v in range(len(off) - 1)], tdt  # views, no copy


def assemble_windows_batch(features: Any, window: int = 300, stride: int = 200,
                           offsets: Any = None):
    """Windows of many videos at once.

    features: a list of ``[T_i, D]`` arrays / CPU tensors, or one concatenated ``[sum T_i, D]``
    with ``offsets [V + 1]`` (video v is rows ``offsets[v]:offsets[v+1]``). Returns
    ``(windows [N, window, D], mask [N, window] bool, index [N, 2] int64 (video, start))``;
    windows are in video order, each video's in plan order (:func:`plan_windows`).
    """
    ints = type(window) is int and type(stride) is int
    if offsets is None and ints and type(features) in (list, tuple) and _use_ext():
        try:
            return _ext.load().assemble_windows_batch(features, window, stride)
        except _REFUSED:
            pass  # torch tensors, or an error worded below
    w, s = _check_window_stride(window, stride)
    if offsets is None:
        arrays, torch_dtype = _features_list(features)
    else:
        arrays, torch_dtype = _split_offsets(features, offsets)
    if _use_ext():  # checked above: plan, allocate and fill in one call
        windows, mask, idx = _ext.load().assemble_windows_batch(arrays, w, s, env.num_threads())
    else:
        idx = _plan_index([a.shape[0] for a in arrays], w, s)
        windows, mask = _gather(arrays, idx, w, None)
    if torch_dtype is not None:
        import torch

        windows, mask = _torch_windows(windows, mask, torch_dtype)
        idx = torch.from_numpy(idx)
    return windows, mask, idx


def assemble_windows(features: Any, window: int = 300, stride: int = 200):
    """Cut one video's features ``[T, D]`` into ``(windows [N, window, D], mask [N, window])``.

    Windows start at :func:`plan_windows` ``(T, window, stride)``. The input is read in place
    (any strides); the output is allocated once, in the input's dtype; padding is zero with
    mask False. CUDA tensors and tensors that require grad go through
    :func:`assemble_windows_torch`.
    """
    if type(window) is int and type(stride) is int and _use_ext():
        raw = features if type(features) is np.ndarray else _engine_torch_in(features)
        if raw is not None:
            try:
                if type(raw) is np.ndarray:
                    return _ext.load().assemble_windows(raw, window, stride)
                return _torch_windows(*_ext.load().assemble_windows(raw[0], window, stride), raw[1])
            except _REFUSED:
                pass  # an error, worded below
    if _wants_torch_path(features):
        return assemble_windows_torch(features, window, stride)
    w, s = _check_window_stride(window, stride)
    a, torch_dtype = _features_array(features, "features")
    idx = _plan_index([a.shape[0]], w, s)
    return _gather([a], idx, w, torch_dtype)


def assemble_windows_torch(features, window: int = 300, stride: int = 200):
    """Pure torch :func:`assemble_windows` (``unfold``; any device, differentiable).

    The baseline of bench/bench_segments.py and the path for CUDA tensors.
    """
    import torch

    w, s = _check_window_stride(window, stride)
    if features.ndim != 2 or features.shape[0] <= 0:
        raise ValueError(f"features must be 2-D [T, D] with T > 0, got {tuple(features.shape)}")
    t = features.shape[0]
    starts = plan_windows(t, w, s)
    if t < w:
        windows = torch.zeros((1, w, features.shape[1]), dtype=features.dtype,
                              device=features.device)
        windows[0, :t] = features
        mask = torch.arange(w, device=features.device)[None] < t
        return windows, mask
    regular = features.unfold(0, w, s).transpose(1, 2)  # [n_reg, w, D] view
    if len(starts) > regular.shape[0]:  # the extra window ending at the last frame
        windows = torch.cat([regular, features[t - w:][None]])
    else:
        windows = regular.contiguous()
    return windows, torch.ones((len(starts), w), dtype=torch.bool, device=features.device)


# ------------------------------------------------------------------------------ averaging


def _uncovered_error(video: int, frame: int) -> ValueError:
    return ValueError(f"frame {frame} of video {video} is not covered by any window (starts "
                      f"must cover every frame, as plan_windows' do)")


def overlap_average_batch_ref(window_preds: Any, index: Any, n_frames: Sequence[int],
                              weighting: Any = "uniform") -> list[np.ndarray]:
    """Reference of :func:`overlap_average_batch`: float64 sums in a loop over windows."""
    p, kind = _preds_array(window_preds)
    p = _preds_float(p, kind).astype(np.float64)
    lengths = [_check_n_frames(n, f"n_frames[{v}]") for v, n in enumerate(n_frames)]
    idx = _check_index(index, lengths)
    _check_plan_length(p, idx)
    wts = window_weights(p.shape[1], weighting).astype(np.float64)
    acc = [np.zeros((n, p.shape[2])) for n in lengths]
    wsum = [np.zeros(n) for n in lengths]
    for pi, (v, s) in zip(p, idx):
        e = min(s + p.shape[1], lengths[v])
        acc[v][s:e] += wts[:e - s, None] * pi[:e - s]
        wsum[v][s:e] += wts[:e - s]
    for v, ws in enumerate(wsum):
        if (ws == 0).any():
            raise _uncovered_error(v, int(np.argmax(ws == 0)))
    return [(a / ws[:, None]).astype(np.float32) for a, ws in zip(acc, wsum)]


def overlap_average_ref(window_preds: Any, starts: Any, n_frames: int,
                        weighting: Any = "uniform") -> np.ndarray:
    """Reference of :func:`overlap_average`."""
    n = _check_n_frames(n_frames)
    st = _check_starts(starts, n)
    idx = np.stack([np.zeros_like(st), st], axis=1)
    return overlap_average_batch_ref(window_preds, idx, [n], weighting)[0]


def _check_plan_length(p: np.ndarray, idx: np.ndarray) -> None:
    if len(idx) != p.shape[0]:
        raise ValueError(f"window_preds has {p.shape[0]} windows but the plan (starts/index) has "
                         f"{len(idx)}")


def _wants_torch_path(x: Any) -> bool:
    return _is_torch(x) and (x.device.type != "cpu" or x.requires_grad)


def plan_windows_batch(n_frames: Sequence[int], window: int = 300, stride: int = 200) -> np.ndarray:
    """:func:`plan_windows` of many videos at once: ``[N, 2]`` int64 ``(video, start)`` rows,
    videos in order, each video's windows in start order (the index ``gather_windows`` and
    ``overlap_average_batch`` take)."""
    w, s = _check_window_stride(window, stride)
    lengths = [_check_n_frames(n, f"n_frames[{v}]") for v, n in enumerate(n_frames)]
    return _plan_index(lengths, w, s)


_ENGINE_KINDS: dict = {}  # torch dtype -> bf16 flag, filled on the first torch call


def _average_fast(window_preds: Any, index: Any, n_frames: Any, weighting: Any, ndim: int):
    """The engine's (out [sum T_v, K] float32, torch dtype or None) straight from the arguments
    (index: starts [N] for ndim 1, (video, start) [N, 2] for ndim 2), or None when the general
    path must run (a dtype to convert, an error to word, an uncovered frame)."""
    if type(window_preds) is np.ndarray:
        raw, bf16, tdt = window_preds, False, None
    else:
        t = _engine_torch_in(window_preds)
        if t is None:
            return None
        if not _ENGINE_KINDS:
            import torch

            _ENGINE_KINDS.update({torch.float32: False, torch.float16: False, torch.bfloat16: True})
        (raw, tdt), bf16 = t, _ENGINE_KINDS.get(t[1])
        if bf16 is None:
            return None
    if raw.ndim != 3:
        return None
    wts = _fast_weights(raw.shape[1], weighting)
    if wts is False:
        return None
    if type(index) is not np.ndarray:
        index = index.detach().cpu().numpy() if _is_torch(index) else np.asarray(index)
    if index.ndim != ndim:
        return None
    try:
        out, row = _ext.load().average(raw, bf16, index, n_frames, wts)
    except _REFUSED:
        return None
    return None if row >= 0 else (out, tdt)


def overlap_average_batch(window_preds: Any, index: Any, n_frames: Sequence[int],
                          weighting: Any = "uniform") -> list:
    """Per-frame predictions of many videos from their windows' predictions.

    window_preds: ``[N, window, K]`` (float32, float16, bfloat16; others are converted to
    float32 once). index: ``[N, 2]`` ``(video, start)`` rows, as returned by
    :func:`assemble_windows_batch`. n_frames: frame count per video. Returns a list of
    ``[T_v, K]`` float32 (NumPy, or torch for torch input; views into one buffer).
    Window positions past the end of a video are ignored.
    """
    fast = None
    if type(n_frames) in (list, tuple, np.ndarray) and _use_ext():
        fast = _average_fast(window_preds, index, n_frames, weighting, 2)
    if fast is not None:
        return _split_frames(fast[0], n_frames, fast[1])
    if _wants_torch_path(window_preds):
        import torch

        lengths = [_check_n_frames(n, f"n_frames[{v}]") for v, n in enumerate(n_frames)]
        idx = _check_index(index, lengths)
        if len(idx) != window_preds.shape[0]:
            raise ValueError(f"window_preds has {window_preds.shape[0]} windows but index has "
                             f"{len(idx)}")
        rows = [np.flatnonzero(idx[:, 0] == v) for v in range(len(lengths))]
        return [overlap_average_torch(window_preds[torch.from_numpy(r)], idx[r, 1], n, weighting)
                for r, n in zip(rows, lengths)]
    is_torch = _is_torch(window_preds)
    p, kind = _preds_array(window_preds)
    lengths = np.asarray([_check_n_frames(n, f"n_frames[{v}]") for v, n in enumerate(n_frames)],
                         dtype=np.int64)
    if len(lengths) == 0:
        raise ValueError("n_frames must list at least one video")
    idx = _check_index(index, lengths)
    _check_plan_length(p, idx)
    wts = window_weights(p.shape[1], weighting)
    if _use_ext():
        out = np.empty((int(lengths.sum()), p.shape[2]), dtype=np.float32)
        row = _ext.load().overlap_average(p, kind, np.ascontiguousarray(idx[:, 0]),
                                          np.ascontiguousarray(idx[:, 1]), lengths, wts, out,
                                          env.num_threads())
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        if row >= 0:
            v = int(np.searchsorted(offsets, row, side="right") - 1)
            raise _uncovered_error(v, int(row - offsets[v]))
        outs = [out[offsets[v]:offsets[v + 1]] for v in range(len(lengths))]
    else:
        outs = overlap_average_batch_ref(_preds_float(p, kind), idx, lengths, wts)
    if is_torch:
        import torch

        outs = [torch.from_numpy(o) for o in outs]
    return outs


def overlap_average(window_preds: Any, starts: Any, n_frames: int,
                    weighting: Any = "uniform"):
    """Per-frame predictions ``[n_frames, K]`` float32 from window predictions ``[N, w, K]``.

    Frame t gets the weighted mean of ``window_preds[i, t - starts[i]]`` over every window i
    covering it (weights :func:`window_weights`); positions past ``n_frames`` (padding) never
    count. A frame no window covers raises ValueError.
    """
    if type(n_frames) is int and _use_ext():
        fast = _average_fast(window_preds, starts, n_frames, weighting, 1)
        if fast is not None:
            return fast[0] if fast[1] is None else _split_frames(fast[0], [n_frames], fast[1])[0]
    if _wants_torch_path(window_preds):
        return overlap_average_torch(window_preds, starts, n_frames, weighting)
    n = _check_n_frames(n_frames)
    st = _check_starts(starts, n)
    idx = np.stack([np.zeros_like(st), st], axis=1)
    return overlap_average_batch(window_preds, idx, [n], weighting)[0]


def _split_frames(out: np.ndarray, n_frames: Any, torch_dtype: Any) -> list:
    """Views of out [sum T_v, K], one per video (torch tensors for torch input)."""
    outs, a = [], 0
    for n in n_frames:
        outs.append(out[a:a + n])
        a += n
    if torch_dtype is not None:
        import torch

        outs = [torch.from_numpy(o) for o in outs]
    return outs


def _check_starts(starts: Any, n: int) -> np.ndarray:
    st = _int_array(starts.detach().cpu() if _is_torch(starts) else starts, "starts", 1)
    bad = (st < 0) | (st >= n)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"starts[{i}] = {st[i]} out of range [0, n_frames={n})")
    return st


def overlap_average_torch(window_preds, starts: Any, n_frames: int, weighting: Any = "uniform"):
    """Pure torch :func:`overlap_average` (``index_add_``; any device, differentiable)."""
    import torch

    n = _check_n_frames(n_frames)
    if window_preds.ndim != 3:
        raise ValueError(f"window_preds must be 3-D [N, window, K], got shape "
                         f"{tuple(window_preds.shape)}")
    dev = window_preds.device
    st = torch.as_tensor(_check_starts(starts, n), device=dev)
    num, w, k = window_preds.shape
    if st.shape[0] != num:
        raise ValueError(f"window_preds has {num} windows but the plan (starts) has "
                         f"{st.shape[0]}")
    wts = torch.from_numpy(window_weights(w, weighting)).to(dev)
    pos = st[:, None] + torch.arange(w, device=dev)  # [N, w] frame of each position
    valid = (pos < n).reshape(-1)
    pos = pos.reshape(-1)[valid]
    wflat = wts.expand(num, w).reshape(-1)[valid]
    x = (window_preds.float() * wts[None, :, None]).reshape(-1, k)[valid]
    acc = torch.zeros((n, k), dtype=torch.float32, device=dev).index_add_(0, pos, x)
    wsum = torch.zeros(n, dtype=torch.float32, device=dev).index_add_(0, pos, wflat)
    if bool((wsum == 0).any()):
        raise _uncovered_error(0, int(torch.nonzero(wsum == 0)[0, 0]))
    return acc / wsum[:, None]
