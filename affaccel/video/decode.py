"""Raw video decoding: frames in order, with their timestamps, with bounded memory.

Two decoders behind one function, :func:`iter_video`:

* PyAV (FFmpeg on CPU): any codec, streams frame by frame, so memory is one batch. It is also
  the reference the DALI path is tested against, and it reads the timestamps for both.
* DALI ``fn.decoders.video``: on GPU (``device="mixed"``) through NVDEC, for H.264, HEVC, AV1,
  MPEG-4, VP8, VP9 and MJPEG; on CPU (``device="cpu"``) only VP8, VP9 and MJPEG.

``backend="auto"`` takes DALI on CUDA and PyAV on CPU: on CPU PyAV measured about 3.5x faster
than DALI's CPU decoder on VP9 (see :func:`choose_backend`); ``backend="dali"`` still runs it.

DALI's video decoder turns one encoded file into one ``[F, H, W, 3]`` tensor. To keep memory
bounded it is run on chunks (``start_frame`` / ``sequence_length``) of at most
``max_chunk_bytes`` of decoded frames. Each chunk re-opens the stream and seeks to the nearest
key frame before its start, so a chunk costs the frames from that key frame on: cheap when key
frames are a few seconds apart (usual for camera and web video), expensive when a file has a
single key frame. A video whose decoded frames fit in one chunk is decoded in one run.

Timestamps (seconds) are the container's presentation timestamps, ``pts * time_base``: PyAV
gives them per decoded frame; for DALI they are read by demuxing the file with PyAV (no
decoding) and sorting the packets' pts, so variable-frame-rate files get their real times.
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
import warnings
from typing import Iterator

import numpy as np

# Codecs DALI decodes on CPU (fn.decoders.video, device="cpu"); FFmpeg codec names.
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
# ... and on GPU (device="mixed", NVDEC).
DALI_GPU_CODECS = DALI_CPU_CODECS | {"h264", "hevc", "av1", "mpeg4"}

# Decoded bytes per DALI chunk (frames * H * W * 3); a chunk never has fewer frames than the
# requested batch. CPU: 256 MiB (~485 frames at 480x360). GPU: 1 GiB (~170 frames at 1080p):
# fewer, longer chunks mean fewer re-seeks, and an 80 GB GPU has room.
DEFAULT_MAX_CHUNK_BYTES = 256 << 20
DEFAULT_MAX_CHUNK_BYTES_GPU = 1 << 30


class VideoDecodeError(Exception):
    """A video could not be read. ``path`` names the file, ``reason`` says why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclasses.dataclass
class VideoInfo:
    path: str
    codec: str                 # FFmpeg codec name: "h264", "vp9", ...
    width: int
    height: int
    fps: float                 # average frame rate reported by the container (0.0 if unknown)
    n_frames_reported: int     # the container's frame count: unreliable, 0 when unknown
    duration_s: float          # stream (or container) duration, NaN when unknown


@dataclasses.dataclass
class FrameBatch:
    """Consecutive decoded frames.

    frames: [B, H, W, 3] uint8 RGB (NumPy on CPU, torch on CUDA);
    timestamps_s: [B] float64 presentation times in seconds;
    start_index: index of frames[0] in the video (0-based, decode order = display order).
    """

    frames: object
    timestamps_s: np.ndarray
    start_index: int

    def __len__(self) -> int:
        return int(self.timestamps_s.shape[0])


def _av():
    import av

    return av


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "is a directory, expected a video file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")


def _open(path: str):
    """Open ``path`` with PyAV; returns (container, video stream) or raises VideoDecodeError."""
    av = _av()
    _check_file(path)
    try:
        container = av.open(path)
    except av.error.FFmpegError as e:
        raise VideoDecodeError(path, f"not a readable video container ({e})") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream in the file")
    return container, container.streams.video[0]


def probe_video(path) -> VideoInfo:
    """Container metadata of ``path`` (no decoding). Frame counts from containers are
    unreliable: count decoded frames when the exact number matters."""
    path = os.fspath(path)
    container, stream = _open(path)
    with container:
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6  # AV_TIME_BASE
        else:
            duration = math.nan
        return VideoInfo(
            path=path,
            codec=ctx.name,
            width=int(ctx.width),
            height=int(ctx.height),
            fps=float(rate) if rate else 0.0,
            n_frames_reported=int(stream.frames or 0),
            duration_s=duration,
        )


def _declared_end(container, stream) -> float:
    """End time (s) the container declares for the video stream; NaN when it declares none."""
    if stream.duration is not None and stream.time_base is not None:
        start = stream.start_time * stream.time_base if stream.start_time is not None else 0
        return float(start + stream.duration * stream.time_base)
    if container.duration is not None:
        start = container.start_time if container.start_time is not None else 0
        return (start + container.duration) / 1e6  # AV_TIME_BASE units
    return math.nan


def _warn_if_short(path, last_ts: float, declared_end: float, fps: float) -> None:
    """A file cut short still declares its full duration (Matroska/WebM headers do): warn
    when the decoded frames stop more than two frame intervals before it."""
    interval = 1.0 / fps if fps else 0.04
    if math.isfinite(declared_end) and last_ts + 3 * interval < declared_end:
        warnings.warn(f"{path}: frames end at {last_ts:.3f} s but the container declares "
                      f"{declared_end:.3f} s (truncated file?)", stacklevel=4)


def packet_timestamps(path) -> np.ndarray:
    """Presentation times (s) of the video frames of ``path``, in display order: [F] float64.

    Read by demuxing only (no decoding). Packets without pts, and empty packets (the flush
    packet), carry no frame.
    """
    path = os.fspath(path)
    container, stream = _open(path)
    av = _av()
    pts = []
    with container:
        try:
            for packet in container.demux(stream):
                if packet.pts is not None and packet.size > 0:
                    pts.append(packet.pts)
        except av.error.FFmpegError as e:
            if not pts:
                raise VideoDecodeError(path, f"cannot read packets ({e})") from None
            warnings.warn(f"{path}: demuxing stopped after {len(pts)} packets: {e}", stacklevel=2)
        tb = float(stream.time_base)
        end = _declared_end(container, stream)
        rate = float(stream.average_rate or stream.guessed_rate or 0)
    stamps = np.sort(np.asarray(pts, dtype=np.int64)).astype(np.float64) * tb
    if len(stamps):
        _warn_if_short(path, float(stamps[-1]), end, rate)
    return stamps


# ---------------------------------------------------------------------------------------------
# PyAV


# A file whose packets keep failing is not worth reading on: stop after this many in a row.
MAX_CONSECUTIVE_BAD_PACKETS = 50


def _pyav_frames(path: str, container, stream):
    """Decoded frames of ``stream``, packet by packet. A packet that fails to decode is
    skipped (as the ffmpeg tool does) and counted; one warning summarises them at the end."""
    av = _av()
    bad, in_a_row, first_error, frames_before = 0, 0, None, 0
    n_frames = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as e:  # the container itself breaks off
            if not bad:
                first_error, frames_before = e, n_frames
            bad += 1
            break
        try:
            decoded = packet.decode()
        except av.error.FFmpegError as e:
            if not bad:
                first_error, frames_before = e, n_frames
            bad, in_a_row = bad + 1, in_a_row + 1
            if in_a_row >= MAX_CONSECUTIVE_BAD_PACKETS:
                break
            continue
        in_a_row = 0
        for frame in decoded:
            n_frames += 1
            yield frame
    if bad:
        warnings.warn(f"{path}: decoding stopped after {frames_before} frames at a damaged "
                      f"packet ({first_error}) and resumed past it; {bad} packet(s) could not "
                      f"be decoded and were skipped (corrupt or truncated file)", stacklevel=4)


def _iter_pyav(path: str, device: str, batch_size: int) -> Iterator[FrameBatch]:
    container, stream = _open(path)
    # Frame threading: several frames decode at once (the default slices one frame).
    stream.thread_type = "AUTO"
    tb = float(stream.time_base) if stream.time_base is not None else None
    rate = float(stream.average_rate or stream.guessed_rate or 0) or None
    declared_end = _declared_end(container, stream)
    frames, stamps = [], []
    last_ts = math.nan
    n_done = 0
    n_backwards = 0
    with container:
        for frame in _pyav_frames(path, container, stream):
            ts = _frame_time(frame, tb, rate, n_done + len(frames))
            if ts <= last_ts:  # a corrupt packet's time: display order must move forward
                n_backwards += 1
                continue
            frames.append(frame.to_ndarray(format="rgb24"))
            stamps.append(ts)
            last_ts = ts
            if len(frames) == batch_size:
                yield _make_batch(frames, stamps, n_done, device)
                n_done += len(frames)
                frames, stamps = [], []
        if frames:
            yield _make_batch(frames, stamps, n_done, device)
            n_done += len(frames)
    if n_done == 0:
        raise VideoDecodeError(path, "no frame of the video stream could be decoded")
    if n_backwards:
        warnings.warn(f"{path}: dropped {n_backwards} frame(s) whose timestamp did not follow "
                      "the previous frame's (corrupt timestamps)", stacklevel=3)
    _warn_if_short(path, last_ts, declared_end, rate or 0.0)


def _frame_time(frame, tb, rate, index) -> float:
    pts = frame.pts if frame.pts is not None else getattr(frame, "dts", None)
    if pts is not None and tb is not None:
        return float(pts * tb)
    if rate:  # no timestamps in the stream: assume a constant rate
        return index / rate
    return math.nan


def _make_batch(frames, stamps, start, device) -> FrameBatch:
    arr = np.stack(frames)
    if device != "cpu":
        import torch

        arr = torch.from_numpy(arr).to(device, non_blocking=True)
    return FrameBatch(arr, np.asarray(stamps, dtype=np.float64), start)


# ---------------------------------------------------------------------------------------------
# DALI


_PIPES: dict = {}
_PIPES_LOCK = threading.Lock()


def _dali_pipeline(device: str, num_threads: int, device_id):
    """(pipeline, lock) decoding one chunk of one video per run; built once per device.

    Building costs about a second, so the pipeline is shared by every iter_video call; each
    feed + run happens under the lock, so interleaved generators (or threads) cannot mix
    their inputs.
    """
    key = (device, num_threads, device_id)
    with _PIPES_LOCK:
        if key in _PIPES:
            return _PIPES[key]
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=1)
    def pipe():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        start = fn.external_source(name="start", dtype=types.INT32, ndim=0)
        length = fn.external_source(name="length", dtype=types.INT32, ndim=0)
        return fn.decoders.video(encoded, device="mixed" if device != "cpu" else "cpu",
                                 start_frame=start, sequence_length=length, pad_mode="none")

    p = pipe()
    p.build()
    with _PIPES_LOCK:
        return _PIPES.setdefault(key, (p, threading.Lock()))


def _iter_dali(path: str, device: str, batch_size: int, max_chunk_bytes: int,
               num_threads: int = 2) -> Iterator[FrameBatch]:
    """Checks (codec, frame count) run now; decoding runs as the returned iterator advances."""
    info = probe_video(path)
    codecs = DALI_CPU_CODECS if device == "cpu" else DALI_GPU_CODECS
    if info.codec not in codecs:
        raise VideoDecodeError(
            path, f"DALI cannot decode codec {info.codec!r} on {device} "
                  f"(supported: {sorted(codecs)}); use backend='pyav'")
    stamps = packet_timestamps(path)
    n = int(stamps.shape[0])
    if n == 0:
        raise VideoDecodeError(path, "the video stream holds no frame")
    frame_bytes = max(1, info.width * info.height * 3)
    chunk = max(batch_size, max_chunk_bytes // frame_bytes)
    chunk = min(n, -(-chunk // batch_size) * batch_size)  # whole batches per chunk
    return _dali_chunks(path, device, batch_size, chunk, stamps, num_threads)


def _dali_chunks(path, device, batch_size, chunk, stamps, num_threads):
    n = int(stamps.shape[0])
    if device == "cpu":
        device_id = None
    else:
        import torch

        device_id = torch.device(device).index
        device_id = torch.cuda.current_device() if device_id is None else device_id
    # The encoded file stays in host memory (its compressed size) while chunks are decoded.
    encoded = np.fromfile(path, dtype=np.uint8)
    pipe = lock = None
    done = 0
    while done < n:
        length = min(chunk, n - done)
        try:
            if pipe is None:  # building can fail too (no NVDEC on this GPU, ...)
                pipe, lock = _dali_pipeline(device, num_threads, device_id)
            with lock:
                pipe.feed_input("encoded", [encoded])
                pipe.feed_input("start", [np.array(done, np.int32)])
                pipe.feed_input("length", [np.array(length, np.int32)])
                (out,) = pipe.run()
                frames = _dali_to_array(out, device)
        except RuntimeError as e:
            _drop_pipeline(device, num_threads, device_id)  # DALI leaves it unusable
            # FFmpeg skips what it cannot decode and goes on; decode what can be decoded
            warnings.warn(f"{path}: DALI failed after {done} frames ({_dali_reason(e)}); "
                          "decoding the rest with PyAV", stacklevel=3)
            yield from _pyav_from(path, device, batch_size, done)
            return
        got = int(frames.shape[0])
        for b in range(0, got, batch_size):
            sl = slice(b, min(b + batch_size, got))
            yield FrameBatch(frames[sl], stamps[done + b: done + sl.stop], done + b)
        done += got
        if got < length:
            warnings.warn(f"{path}: {n} frames in the container, DALI decoded {done} "
                          "(truncated or corrupt file)", stacklevel=3)
            return


def _pyav_from(path, device, batch_size, first: int) -> Iterator[FrameBatch]:
    """PyAV batches of ``path`` from frame index ``first`` on."""
    for b in _iter_pyav(path, device, batch_size):
        k = max(0, first - b.start_index)
        if k < len(b):
            yield FrameBatch(b.frames[k:], b.timestamps_s[k:], b.start_index + k)


def _dali_reason(err: Exception) -> str:
    """The informative line of a (long, multi-line) DALI pipeline error."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Assert", "Error", "Failed", "Unsupported")) and "operator" not in ln:
            return ln
    return lines[0][:200] if lines else type(err).__name__


def _drop_pipeline(*key) -> None:
    with _PIPES_LOCK:
        _PIPES.pop(key, None)


def _dali_to_array(out, device: str):
    """The single sample of a DALI TensorList: [F, H, W, 3] uint8 (NumPy, or torch on CUDA)."""
    if device == "cpu":
        return np.array(out[0])
    import torch
    from nvidia.dali.plugin.pytorch import feed_ndarray

    t = out[0]
    dst = torch.empty(tuple(t.shape()), dtype=torch.uint8, device=device)
    feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream(dst.device))
    return dst


# ---------------------------------------------------------------------------------------------


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(path, backend: str = "auto", device: str = "cpu") -> str:
    """The decoder ``iter_video`` uses for ``path``: "dali" or "pyav".

    auto: DALI (NVDEC) on CUDA for the codecs NVDEC handles, PyAV otherwise. On CPU, PyAV
    even for VP8/VP9/MJPEG, which DALI could decode: measured side by side on VP9 480x360
    (bench/bench_video.py, 2 cores) PyAV with frame threading decodes about 3.5x faster than
    DALI's CPU decoder, and it streams, where DALI needs chunks that each re-seek.
    """
    if backend not in ("auto", "dali", "pyav"):
        raise ValueError(f"backend must be 'auto', 'dali' or 'pyav', got {backend!r}")
    if backend != "auto":
        return backend
    if device == "cpu" or not dali_available():
        return "pyav"
    return "dali" if probe_video(path).codec in DALI_GPU_CODECS else "pyav"


def iter_video(path, backend: str = "auto", device: str = "cpu", batch_size: int = 64,
               max_chunk_bytes: int | None = None) -> Iterator[FrameBatch]:
    """Decode ``path`` into consecutive :class:`FrameBatch` es of up to ``batch_size`` frames.

    frames: [B, H, W, 3] uint8 RGB (NumPy for device="cpu", torch on the CUDA device otherwise);
    timestamps_s: [B] float64 container presentation times. Frames come in display order and
    memory stays bounded (PyAV: one batch; DALI: one chunk of at most ``max_chunk_bytes``,
    default 256 MiB on CPU, 1 GiB on GPU).

    Raises VideoDecodeError (naming the file) for a missing, empty, non-video or undecodable
    file or one without a video stream. A damaged file yields what decodes and warns: a
    truncated file its frames up to the cut, a corrupt one its frames minus the undecodable
    packets (and minus frames whose timestamps go backwards); a DALI failure hands the rest
    of the file to PyAV.
    """
    path = os.fspath(path)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device != "cpu" and not str(device).startswith("cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    probe_video(path)  # a missing / empty / non-video file fails here, not at the first next()
    chosen = choose_backend(path, backend, device)
    if chosen == "pyav":
        return _iter_pyav(path, device, batch_size)
    if not dali_available():
        raise ImportError("backend='dali' needs nvidia-dali (pip install nvidia-dali-cuda130)")
    if max_chunk_bytes is None:
        max_chunk_bytes = DEFAULT_MAX_CHUNK_BYTES if device == "cpu" else DEFAULT_MAX_CHUNK_BYTES_GPU
    return _iter_dali(path, device, batch_size, max_chunk_bytes)


def read_video(path, backend: str = "auto", device: str = "cpu"):
    """Whole video at once (short clips, tests): (frames [F, H, W, 3] uint8, timestamps_s [F])."""
    batches = list(iter_video(path, backend=backend, device=device, batch_size=256))
    if device == "cpu":
        frames = np.concatenate([b.frames for b in batches])
    else:
        import torch

        frames = torch.cat([b.frames for b in batches])
    return frames, np.concatenate([b.timestamps_s for b in batches])
