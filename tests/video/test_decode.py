"""Video decoding: DALI (CPU, VP9) against PyAV, H.264 via PyAV, timestamps, errors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from affaccel.video import decode
from affaccel.video.decode import (
    VideoDecodeError,
    choose_backend,
    iter_video,
    probe_video,
    read_video,
)

from _video_media import pattern_frame

# DALI and PyAV convert YUV 4:2:0 to RGB with different chroma upsampling: frames agree to
# about one level on average, a few levels at sharp colour edges (measured: mean 0.5-1.7).
MEAN_TOL, P99_TOL = 2.0, 12


def _agree(a, b):
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert d.mean() < MEAN_TOL and np.percentile(d, 99) <= P99_TOL, (d.mean(), d.max())


def test_probe(media):
    info = probe_video(media["vp9"])
    assert (info.codec, info.width, info.height, info.fps) == ("vp9", 160, 120, 25.0)
    assert info.duration_s == pytest.approx(1.6, abs=0.05)
    info = probe_video(media["h264"])
    assert info.codec == "h264" and info.n_frames_reported == 30


def test_dali_vp9_matches_pyav(media):
    fa, ta = read_video(media["vp9"], backend="pyav")
    fd, td = read_video(media["vp9"], backend="dali")
    assert fa.shape == fd.shape == (40, 120, 160, 3) and fd.dtype == np.uint8
    np.testing.assert_array_equal(ta, td)
    np.testing.assert_allclose(ta, np.arange(40) / 25, atol=1e-9)
    _agree(fa, fd)
    # and both are close to what was encoded (lossy codec)
    src = np.stack([pattern_frame(i, 120, 160) for i in range(40)])
    assert np.abs(fa.astype(np.int16) - src).mean() < 4


def test_dali_chunks_equal_whole_video(media):
    whole, _ = read_video(media["vp9"], backend="dali")
    frame_bytes = 160 * 120 * 3
    batches = list(iter_video(media["vp9"], backend="dali", batch_size=6,
                              max_chunk_bytes=12 * frame_bytes))  # 12-frame chunks
    assert [len(b) for b in batches] == [6] * 6 + [4]
    assert [b.start_index for b in batches] == list(range(0, 40, 6))
    np.testing.assert_array_equal(np.concatenate([b.frames for b in batches]), whole)


def test_pyav_batches_in_order(media):
    batches = list(iter_video(media["vp9"], backend="pyav", batch_size=16))
    assert [len(b) for b in batches] == [16, 16, 8]
    assert [b.start_index for b in batches] == [0, 16, 32]
    ts = np.concatenate([b.timestamps_s for b in batches])
    assert np.all(np.diff(ts) > 0)


def test_h264_through_pyav_on_cpu(media):
    assert choose_backend(media["h264"], "auto", "cpu") == "pyav"
    frames, ts = read_video(media["h264"])
    assert frames.shape == (30, 120, 160, 3)
    np.testing.assert_allclose(ts, np.arange(30) / 25, atol=1e-9)
    src = np.stack([pattern_frame(i, 120, 160) for i in range(30)])
    assert np.abs(frames.astype(np.int16) - src).mean() < 4
    with pytest.raises(VideoDecodeError, match=r"clip\.mp4.*h264"):
        iter_video(media["h264"], backend="dali")


def test_backend_choice(media):
    # on CPU PyAV, the faster decoder there (bench/bench_video.py), for every codec
    assert choose_backend(media["vp9"], "auto", "cpu") == "pyav"
    assert choose_backend(media["vp9"], "dali", "cpu") == "dali"
    with pytest.raises(ValueError, match="backend"):
        choose_backend(media["vp9"], "ffmpeg", "cpu")


def test_dali_pipeline_is_reused_across_videos(media):
    a1, _ = read_video(media["vp9"], backend="dali")
    b, _ = read_video(media["vfr"], backend="dali")  # another video through the same pipeline
    a2, _ = read_video(media["vp9"], backend="dali")
    np.testing.assert_array_equal(a1, a2)
    assert b.shape[0] == len(media["vfr_ms"])
    # two generators interleaved share the pipeline without mixing their frames
    g1 = iter_video(media["vp9"], backend="dali", batch_size=4, max_chunk_bytes=4 * 160 * 120 * 3)
    g2 = iter_video(media["vp9"], backend="dali", batch_size=4, max_chunk_bytes=4 * 160 * 120 * 3)
    for x, y in zip(g1, g2):
        np.testing.assert_array_equal(x.frames, y.frames)
        np.testing.assert_array_equal(x.frames, a1[x.start_index:x.start_index + len(x)])


@pytest.mark.parametrize("kind", ["vfr", "vfr_mp4"])
def test_variable_frame_rate_timestamps(media, kind):
    want = media["vfr_ms"] / 1000.0
    _, ts = read_video(media[kind], backend="pyav")
    np.testing.assert_allclose(ts, want, atol=1e-9)
    np.testing.assert_allclose(decode.packet_timestamps(media[kind]), want, atol=1e-9)
    if kind == "vfr":  # DALI CPU: VP9 only
        frames_d, ts_d = read_video(media[kind], backend="dali")
        np.testing.assert_allclose(ts_d, want, atol=1e-9)
        _agree(read_video(media[kind], backend="pyav")[0], frames_d)


@pytest.mark.parametrize("backend", ["pyav", "dali"])
def test_errors_name_the_file(tmp_path, backend):
    missing = tmp_path / "missing.webm"
    with pytest.raises(VideoDecodeError, match="missing.webm: file not found"):
        iter_video(missing, backend=backend)
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match=r"empty.webm: file is empty"):
        iter_video(empty, backend=backend)
    text = tmp_path / "notes.webm"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoDecodeError, match=r"notes.webm: not a readable video"):
        iter_video(text, backend=backend)


def test_no_video_stream(tmp_path):
    import av

    path = tmp_path / "audio.wav"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(VideoDecodeError, match="audio.wav: no video stream"):
        probe_video(path)


@pytest.mark.parametrize("backend", ["pyav", "dali"])
def test_truncated_file(media, tmp_path, backend):
    data = media["vp9"].read_bytes()
    half = tmp_path / "half.webm"
    half.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames, ts = read_video(half, backend=backend)
    assert 0 < len(frames) < 40 and len(ts) == len(frames)
    assert any("half.webm" in str(w.message) and "truncated" in str(w.message) for w in caught)
    # the frames that did decode are the video's first frames
    full, _ = read_video(media["vp9"], backend="pyav")
    _agree(full[: len(frames)], frames)
    # a cut that leaves no decodable frame raises, naming the file
    stub = tmp_path / "stub.webm"
    stub.write_bytes(data[: len(data) // 10])
    with pytest.raises(VideoDecodeError, match="stub.webm"):
        read_video(stub, backend=backend)


@pytest.mark.parametrize("backend", ["pyav", "dali"])
def test_corrupt_middle_decodes_what_it_can(media, tmp_path, backend):
    data = bytearray(media["vp9"].read_bytes())
    rng = np.random.default_rng(0)
    for pos in rng.integers(len(data) // 3, 2 * len(data) // 3, 200):
        data[pos] = rng.integers(0, 256)
    bad = tmp_path / "corrupt.webm"
    bad.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames, ts = read_video(bad, backend=backend)   # no exception: some frames decode
    assert 0 < len(frames) < 40 and len(ts) == len(frames)
    assert ts[0] == 0 and np.all(np.diff(ts) > 0)   # frames with corrupt times are dropped
    assert any("corrupt.webm" in str(w.message) for w in caught)


def test_dali_failure_falls_back_to_pyav(media, monkeypatch):
    def no_decoder(*args):
        raise RuntimeError("Assert on \"nvdec\" failed: no video decoder on this device")

    monkeypatch.setattr(decode, "_dali_pipeline", no_decoder)
    with pytest.warns(UserWarning, match=r"clip.webm: DALI failed after 0 frames .*nvdec.*PyAV"):
        frames, ts = read_video(media["vp9"], backend="dali")
    want, want_ts = read_video(media["vp9"], backend="pyav")
    np.testing.assert_array_equal(frames, want)
    np.testing.assert_array_equal(ts, want_ts)


def test_bad_arguments(media):
    with pytest.raises(ValueError, match="batch_size"):
        iter_video(media["vp9"], batch_size=0)
    with pytest.raises(ValueError, match="backend"):
        iter_video(media["vp9"], backend="opencv")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["vp9", "h264", "vfr_mp4"])
def test_gpu_dali_matches_pyav(dali, media, kind):
    import torch

    assert choose_backend(media[kind], "auto", "cuda") == "dali"
    fa, ta = read_video(media[kind], backend="pyav")
    fd, td = read_video(media[kind], backend="dali", device="cuda")
    assert isinstance(fd, torch.Tensor) and fd.is_cuda and fd.dtype == torch.uint8
    np.testing.assert_array_equal(ta, td)
    assert fd.shape == fa.shape
    _agree(fa, fd.cpu().numpy())


@pytest.mark.gpu
def test_gpu_pyav_uploads(media):
    batches = list(iter_video(media["h264"], backend="pyav", device="cuda", batch_size=8))
    assert all(b.frames.is_cuda for b in batches) and sum(len(b) for b in batches) == 30
