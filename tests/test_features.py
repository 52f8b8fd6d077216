"""Feature cache and extraction: every frame in order, cache keyed by the encoder, atomic entries,
resume after an interrupted run, corrupt entries rebuilt, bad videos reported."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from affaccel.config import TINY_MODEL, ClipConfig
from affaccel.nn.clip import build_encoder
from affaccel.stages import features as F
from affaccel.stages.features import FeatureCache, extract_features

from tolerances import tol


@dataclass
class Rec:
    """The fields of affaccel.data.affwild2.VideoRecord that extraction reads."""
    video_id: str
    n_frames: int
    frame_paths: list
    frame_present: np.ndarray
    split: str = "train"
    labels: dict = field(default_factory=dict)
    label_mask: dict = field(default_factory=dict)


def _write_video(root: Path, vid: str, n: int, seed: int, missing=()) -> Rec:
    """n JPEG frames (32x32, random colours); frames in ``missing`` point at the previous file."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    d = root / vid
    d.mkdir(parents=True)
    paths, present = [], np.ones(n, bool)
    for t in range(n):
        if t in missing:
            paths.append(paths[-1])
            present[t] = False
            continue
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        p = d / f"{t + 1:05d}.jpg"
        Image.fromarray(img).save(p, quality=95)
        paths.append(p)
    return Rec(vid, n, paths, present)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    return [_write_video(root, "vid_a", 7, 0, missing={3}),
            _write_video(root, "vid_b", 5, 1),
            _write_video(root, "vid_c", 9, 2)]


@pytest.fixture(scope="module")
def encoder():
    return build_encoder(ClipConfig(model_name=TINY_MODEL)).eval()


def _expected(encoder, rec) -> np.ndarray:
    """The reference: PIL preprocessing, fp32 encoder, cast to float16."""
    from affaccel.video.frames import clip_preprocess_ref

    x = clip_preprocess_ref([str(p) for p in rec.frame_paths], encoder.image_size, encoder.mean,
                            encoder.std)
    with torch.no_grad():
        return encoder(x).to(torch.float16).numpy()


def _assert_matches(got, ref):
    # fp32 results depend slightly on batch composition (GEMM blocking); after the cast to
    # float16 they agree to the float16 tolerance.
    np.testing.assert_allclose(np.asarray(got, np.float32), ref.astype(np.float32),
                               **tol("float16"))


def _extract(videos, encoder, cache, **kw):
    kw.setdefault("backend", "reference")
    return extract_features(videos, encoder, cache, batch_size=4, progress=False, **kw)


def test_every_frame_in_order_matches_reference(tmp_path, videos, encoder):
    cache = FeatureCache.for_encoder(tmp_path, encoder)
    # batch 4 makes batches straddle video boundaries (7 + 5 + 9 frames)
    out = _extract(videos, encoder, cache)
    assert out["extracted"] == ["vid_a", "vid_b", "vid_c"] and not out["failed"]
    assert out["frames"] == 21
    for rec in videos:
        feats = cache.load_features(rec.video_id)
        assert isinstance(feats, np.memmap) and feats.dtype == np.float16
        assert feats.shape == (rec.n_frames, encoder.feature_dim)
        _assert_matches(np.asarray(feats), _expected(encoder, rec))
    a = cache.load_features("vid_a")
    # missing frame 3 carries frame 2's image, hence its feature
    np.testing.assert_array_equal(a[3], a[2])
    assert not np.array_equal(a[4], a[3])


def test_dali_backend_close_to_reference(tmp_path, videos, encoder):
    import nvidia.dali  # noqa: F401  (a hard dependency: its absence must fail)

    cache = FeatureCache.for_encoder(tmp_path, encoder)
    out = _extract(videos, encoder, cache, backend="dali")
    assert len(out["extracted"]) == 3
    for rec in videos:
        got = np.asarray(cache.load_features(rec.video_id), np.float32)
        ref = _expected(encoder, rec).astype(np.float32)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        # decoder/resizer differences (DALI vs PIL) move features slightly, never far
        assert cos.min() > 0.99, cos


def test_second_run_skips_everything(tmp_path, videos, encoder, monkeypatch):
    cache = FeatureCache.for_encoder(tmp_path, encoder)
    _extract(videos, encoder, cache)
    mtimes = {r.video_id: cache.path(r.video_id).stat().st_mtime_ns for r in videos}

    def no_encoding(*args, **kwargs):
        raise AssertionError("a second run must not encode a frame")

    monkeypatch.setattr(F, "_encode_batches", no_encoding)
    again = _extract(videos, encoder, FeatureCache.for_encoder(tmp_path, encoder))
    assert again["extracted"] == [] and sorted(again["skipped"]) == ["vid_a", "vid_b", "vid_c"]
    assert mtimes == {r.video_id: cache.path(r.video_id).stat().st_mtime_ns for r in videos}


def test_changed_weights_miss_the_cache(tmp_path, videos, encoder):
    cache = FeatureCache.for_encoder(tmp_path, encoder)
    _extract(videos[:1], encoder, cache)
    assert cache.has("vid_a", 7)
    changed = build_encoder(ClipConfig(model_name=TINY_MODEL)).eval()
    with torch.no_grad():
        changed.visual.proj.mul_(1.5)
    other = FeatureCache.for_encoder(tmp_path, changed)
    assert other.dir != cache.dir
    assert not other.has("vid_a")
    with pytest.raises(KeyError, match="vid_a"):
        other.load_features("vid_a")
    out = _extract(videos[:1], changed, other)
    assert out["extracted"] == ["vid_a"]
    _assert_matches(np.asarray(other.load_features("vid_a")), _expected(changed, videos[0]))
    # The old encoder's entry is untouched and still a hit.
    assert FeatureCache.for_encoder(tmp_path, encoder).has("vid_a", 7)
    # A cache handed to the wrong encoder is refused rather than filled with foreign features.
    with pytest.raises(ValueError, match="another encoder"):
        _extract(videos[:1], changed, cache)


class _Interrupt(Exception):
    pass


def test_resume_after_interruption(tmp_path, videos, encoder):
    cache = FeatureCache.for_encoder(tmp_path, encoder)
    done = []

    def stop_after_first(video_id):
        done.append(video_id)
        raise _Interrupt  # as if the process died right after the first video was stored

    with pytest.raises(_Interrupt):
        _extract(videos, encoder, cache, on_video_done=stop_after_first)
    assert done == ["vid_a"]
    fresh = FeatureCache.for_encoder(tmp_path, encoder)  # a new process reads the manifest
    assert fresh.video_ids() == ["vid_a"]
    assert not list(fresh.dir.glob(".*"))  # no temp files left behind
    out = _extract(videos, encoder, fresh)
    assert out["skipped"] == ["vid_a"] and out["extracted"] == ["vid_b", "vid_c"]
    for rec in videos:
        _assert_matches(np.asarray(fresh.load_features(rec.video_id)), _expected(encoder, rec))


def test_killed_process_leaves_only_complete_entries(tmp_path, videos, encoder):
    """SIGKILL mid-write: the temp file never becomes the entry, the manifest never lists it."""
    import signal
    import subprocess
    import sys

    cache = FeatureCache.for_encoder(tmp_path, encoder)
    code = f"""
import numpy as np, os, signal
from affaccel.stages.features import FeatureCache
c = FeatureCache({str(tmp_path)!r}, {cache.encoder_identity!r}, {cache.preprocessing_identity!r})
c.write("vid_a", np.ones((7, {encoder.feature_dim})), frames={F.frames_fingerprint(videos[0])!r})
orig = np.save
def dying_save(f, arr):  # half the bytes reach the temp file, then the process is killed
    orig(f, arr)
    f.flush()
    f.truncate(f.tell() // 2)
    os.kill(os.getpid(), signal.SIGKILL)
np.save = dying_save
c.write("vid_b", np.ones((5, {encoder.feature_dim})))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    fresh = FeatureCache.for_encoder(tmp_path, encoder)
    assert fresh.video_ids() == ["vid_a"] and fresh.has("vid_a", 7)
    assert not fresh.has("vid_b") and not fresh.path("vid_b").exists()
    assert [p.name for p in fresh.dir.iterdir() if p.name.startswith(".vid_b")]  # killed write
    out = _extract(videos[:2], encoder, fresh)
    assert out["skipped"] == ["vid_a"] and out["extracted"] == ["vid_b"]
    assert fresh.has("vid_b", 5, deep=True)
    assert not [p for p in fresh.dir.iterdir() if p.name.startswith(".")]  # temp cleaned


def test_corrupt_entries_detected_and_rebuilt(tmp_path, videos, encoder):
    cache = FeatureCache.for_encoder(tmp_path, encoder)
    _extract(videos, encoder, cache)
    good = {r.video_id: np.array(cache.load_features(r.video_id)) for r in videos}
    pa, pb, pc = (cache.path(v) for v in ("vid_a", "vid_b", "vid_c"))
    pa.write_bytes(pa.read_bytes()[:100])                  # truncated
    pb.write_bytes(b"garbage" * 100)                        # not an .npy at all
    raw = bytearray(pc.read_bytes())
    raw[-3] ^= 0xFF                                         # one flipped byte: same size
    pc.write_bytes(bytes(raw))
    fresh = FeatureCache.for_encoder(tmp_path, encoder)
    assert "bytes" in fresh.check("vid_a")
    assert fresh.check("vid_b") is not None
    with pytest.raises(ValueError, match="vid_a.*invalid"):
        fresh.load_features("vid_a")
    assert fresh.has("vid_c") and not fresh.has("vid_c", deep=True)  # only the CRC sees a flip
    assert fresh.check("vid_c", n_frames=8) is not None               # wrong frame count
    out = _extract(videos, encoder, fresh, verify=True)
    assert sorted(out["extracted"]) == ["vid_a", "vid_b", "vid_c"]
    for vid, arr in good.items():
        np.testing.assert_array_equal(np.asarray(fresh.load_features(vid)), arr)
        assert fresh.has(vid, deep=True)


def test_unreadable_manifest_starts_afresh(tmp_path, videos, encoder):
    cache = FeatureCache.for_encoder(tmp_path, encoder)
    _extract(videos[:1], encoder, cache)
    cache.manifest_path.write_text("{ not json")
    fresh = FeatureCache.for_encoder(tmp_path, encoder)
    assert fresh.video_ids() == [] and not fresh.has("vid_a")
    assert _extract(videos[:1], encoder, fresh)["extracted"] == ["vid_a"]


def test_bad_video_reported_others_extracted(tmp_path, videos, encoder):
    # one bad frame is masked (tests/faults); a video with no decodable frame fails alone
    root = tmp_path / "frames"
    bad = _write_video(root, "vid_bad", 4, 3)
    for p in bad.frame_paths:
        Path(p).write_bytes(b"\xff\xd8 this is not a jpeg")
    cache = FeatureCache.for_encoder(tmp_path / "cache", encoder)
    out = _extract([videos[0], bad, videos[1]], encoder, cache)
    assert sorted(out["extracted"]) == ["vid_a", "vid_b"]
    assert list(out["failed"]) == ["vid_bad"] and "decoded" in out["failed"]["vid_bad"]
    assert not cache.has("vid_bad")


def test_bad_input_errors(tmp_path, videos, encoder):
    cache = FeatureCache.for_encoder(tmp_path, encoder)
    with pytest.raises(ValueError, match="twice"):
        _extract([videos[0], videos[0]], encoder, cache)
    short = Rec("short", 3, videos[0].frame_paths[:2], np.ones(3, bool))
    with pytest.raises(ValueError, match="short.*2 frame paths"):
        _extract([short], encoder, cache)
    with pytest.raises(ValueError, match="video id"):
        cache.path("../escape")
    with pytest.raises(ValueError, match=r"\[T, D\]"):
        cache.write("x", np.zeros(5))
    with pytest.raises(ValueError, match="encoder_identity"):
        FeatureCache(tmp_path, "")


@pytest.mark.slow
def test_extract_cli_on_tiny_synthetic_set(tmp_path, capsys, monkeypatch):
    """The real reader + DALI + CLI: features for every frame of every video; a missing frame
    gets its neighbour's feature; a second run has nothing to do."""
    from affaccel import extract
    from affaccel.data.affwild2 import load_affwild2
    from affaccel.data.synthetic import ensure_synthetic

    root = ensure_synthetic("tiny", root=tmp_path / "data", progress=False)
    cache_root = tmp_path / "cache"
    assert extract.main(["--data-root", str(root), "--cache", str(cache_root), "--quiet",
                         "--batch-size", "64"]) == 0
    cache_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    enc = F.load_encoder()
    cache = FeatureCache.for_encoder(cache_root, enc)
    assert cache.dir == cache_dir
    records = load_affwild2(root).videos
    assert records and sorted(cache.video_ids()) == sorted(r.video_id for r in records)
    n_missing = 0
    for r in records:
        f = cache.load_features(r.video_id)
        assert f.shape == (r.n_frames, enc.feature_dim) and np.isfinite(f).all()
        for t in np.flatnonzero(~r.frame_present):
            # the reader points a missing frame at a neighbour's file: same image, same feature
            same = [u for u in range(r.n_frames) if r.frame_present[u]
                    and r.frame_paths[u] == r.frame_paths[t]]
            np.testing.assert_array_equal(f[t], f[same[0]])
            n_missing += 1
    assert n_missing > 0  # the synthetic set has missing faces, so the path above ran
    def no_encoding(*args, **kwargs):
        raise AssertionError("a run with every video cached must not encode a frame")

    monkeypatch.setattr(F, "_encode_batches", no_encoding)
    _, summary = F.extract_dataset(root, cache_root=cache_root, progress=False)
    assert summary["extracted"] == [] and len(summary["skipped"]) == len(records)
