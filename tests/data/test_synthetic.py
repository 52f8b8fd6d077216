"""Built-in synthetic set: layout, raw videos and boxes, determinism, label-driven rendering,
label dynamics, the first-use cache and the command line."""
from __future__ import annotations

import csv
import json
import threading

import cv2
import numpy as np
import pytest

from affaccel.data import _render as R
from affaccel.data import synthetic as S
from affaccel.tasks import ACTION_UNITS, TASKS

SMALL = dict(n_train=2, n_val=1, n_frames=(24, 30), raw_videos="none")


def _gen(out, **kw):
    args = dict(SMALL, workers=1, progress=False)
    args.update(kw)
    return S.generate(out, **args)


# ---------------------------------------------------------------------------------------------
# layout


def test_layout_headers_and_images(tiny_set):
    root, _ = tiny_set
    m = json.loads((root / "synthetic.json").read_text())
    assert m["version"] == S.VERSION and m["seed"] == 0 and m["preset"] == "tiny"
    assert m["fps"] == 30 and m["image_size"] == 112
    assert len(m["splits"]["train"]) == 5 and len(m["splits"]["val"]) == 3
    for vid, info in m["videos"].items():
        split_dir = {"train": "Train_Set", "val": "Validation_Set"}[info["split"]]
        for task in info["tasks"]:
            lines = (root / TASKS[task].annotation_dirs[0] / split_dir / f"{vid}.txt"
                     ).read_text().splitlines()
            assert lines[0] == ",".join(TASKS[task].columns)   # exact header
            assert len(lines) - 1 == info["n_frames"]
        for task in set(TASKS) - set(info["tasks"]):
            assert not (root / TASKS[task].annotation_dirs[0] / split_dir / f"{vid}.txt").exists()
        frames = sorted(p.name for p in (root / "cropped_aligned" / vid).iterdir())
        expect = [f"{t + 1:05d}.jpg" for t in range(info["n_frames"])
                  if t not in set(info["missing_frames"])]
        assert frames == expect
    img = cv2.imread(str(root / "cropped_aligned" / "synth001" / "00010.jpg"))
    assert img.shape == (112, 112, 3)
    # a _left/_right pair shares one source video, in each split
    assert {"synth000_left", "synth000_right"} <= set(m["splits"]["train"])
    assert m["videos"]["synth000_left"]["source_video"] == "synth000"
    assert any(v.endswith("_left") for v in m["splits"]["val"])
    # unannotated stretches and missing frames exist
    assert any(n > 0 for v in m["videos"].values() for n in v["unannotated"].values())
    assert any(v["missing_frames"] for v in m["videos"].values())


def test_tiny_generation_stays_small(tiny_set):
    """The tests' preset must stay quick to build: its work is counted, not timed (a loaded
    machine would make a time bound flaky, a generous one would catch nothing). Rendering a
    112 px crop and encoding a 480x360 frame (H.264 + VP9) are what generating costs."""
    _, work = tiny_set
    print(f"tiny preset: {work}")
    assert work["crop_size"] == 112 and work["video_size"] == (480, 360)
    assert 0 < work["face_crops"] <= 1000
    assert 0 < work["raw_frames"] <= 300 and work["raw_files"] <= 4


# ---------------------------------------------------------------------------------------------
# raw videos and boxes


def _decode(path):
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        rate = s.average_rate
    return frames, rate


def _ncc(a, b) -> float:
    """Normalised cross-correlation of two RGB patches (grey levels)."""
    a = a.astype(np.float64).mean(axis=2)
    b = b.astype(np.float64).mean(axis=2)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.mark.parametrize("ext", ["mp4", "webm"])
def test_raw_videos_frame_count_and_boxes(tiny_set, ext):
    root, _ = tiny_set
    m = json.loads((root / "synthetic.json").read_text())
    assert sorted(m["raw_videos"]) == ["synth004", "synth005"]   # the validation sources
    for source, raw in m["raw_videos"].items():
        frames, rate = _decode(root / raw[ext])
        assert len(frames) == raw["n_frames"]                    # == annotation lines
        assert frames[0].shape == (360, 480, 3) and float(rate) == 30.0
        for vid, box_file in raw["boxes"].items():
            info = m["videos"][vid]
            assert info["source_video"] == source and info["n_frames"] == raw["n_frames"]
            with open(root / box_file) as fh:
                rows = list(csv.reader(fh))
            assert rows[0] == ["frame", "x", "y", "w", "h"]
            boxes = {int(r[0]): tuple(map(int, r[1:])) for r in rows[1:]}
            missing = set(info["missing_frames"])
            assert set(boxes) == set(range(info["n_frames"])) - missing
            matched, shifted = [], []
            for t in list(boxes)[::7]:
                x, y, w, h = boxes[t]
                assert w == h and x >= 0 and y >= 0 and x + w <= 480 and y + h <= 360
                crop = cv2.imread(str(root / "cropped_aligned" / vid / f"{t + 1:05d}.jpg"))[..., ::-1]
                xs = x + w // 3 if x + w // 3 <= 480 - w else x - w // 3
                cut, cut2 = (cv2.resize(frames[t][y:y + h, a:a + w], (112, 112),
                                        interpolation=cv2.INTER_AREA) for a in (x, xs))
                # compare the face only: the crop background differs from the scene, and the
                # crop has its own lighting gain and noise, hence correlation
                matched.append(_ncc(cut[20:100, 25:87], crop[20:100, 25:87]))
                shifted.append(_ncc(cut2[20:100, 25:87], crop[20:100, 25:87]))
            # the box locates the face: cutting it out reproduces the crop; a box shifted by a
            # third of its width does not
            assert np.median(matched) > 0.6 and min(matched) > 0.4, (vid, matched)
            assert np.median(shifted) < np.median(matched) - 0.3, (vid, shifted)


def test_pair_boxes_are_side_by_side(tiny_set):
    root, _ = tiny_set
    m = json.loads((root / "synthetic.json").read_text())
    raw = m["raw_videos"]["synth004"]
    assert set(raw["boxes"]) == {"synth004_left", "synth004_right"}
    read = lambda f: np.loadtxt(root / f, delimiter=",", skiprows=1, dtype=int, ndmin=2)
    left, right = read(raw["boxes"]["synth004_left"]), read(raw["boxes"]["synth004_right"])
    assert (left[:, 1] + left[:, 3] <= 240).all() and (right[:, 1] >= 240).all()


# ---------------------------------------------------------------------------------------------
# determinism


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in {".jpg", ".txt", ".csv", ".json"}}


def test_deterministic_by_seed(tmp_path):
    a = _snapshot(_gen(tmp_path / "a", seed=7))
    b = _snapshot(_gen(tmp_path / "b", seed=7, workers=2))   # worker count does not matter
    c = _snapshot(_gen(tmp_path / "c", seed=8))
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert len(a) > 50
    shared = [k for k in a if k.endswith(".jpg") and k in c]
    assert any(a[k] != c[k] for k in shared)
    assert a["VA_Estimation_Challenge/Train_Set/synth000_left.txt"] != \
        c["VA_Estimation_Challenge/Train_Set/synth000_left.txt"]


def test_generate_is_atomic_and_checks_arguments(tmp_path):
    out = _gen(tmp_path / "set")
    assert (out / "synthetic.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["set"]      # no temp folder left behind
    with pytest.raises(FileExistsError, match="not empty"):
        _gen(out)
    _gen(out, overwrite=True, seed=3)
    assert json.loads((out / "synthetic.json").read_text())["seed"] == 3
    for kw, match in [(dict(n_train=0), "n_train"), (dict(n_frames=(10, 5)), "n_frames"),
                      (dict(image_size=16), "image_size"), (dict(video_size=(481, 360)), "video_size"),
                      (dict(raw_videos="some"), "raw_videos")]:
        with pytest.raises(ValueError, match=match):
            _gen(tmp_path / "bad", **kw)
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------------
# labels drive appearance


def _clean(idt, **kw):
    """Noise-free frontal render on a flat background, as float."""
    st = R.FaceState(valence=kw.pop("valence", 0.0), arousal=kw.pop("arousal", 0.0),
                     au=kw.pop("au", np.zeros(12)), **kw)
    canvas = np.full((112, 112, 3), 128, np.uint8)
    img, _ = R.render_face(idt, st, 112, canvas=canvas)
    return img.astype(np.float64)


# rows of the 112 crop (frontal pose): brows, eyes, mouth/jaw bands
_BANDS = {"brow": (38, 58), "eye": (52, 64), "cheek": (60, 75), "mouth": (68, 112)}
_AU_BAND = {"AU1": "brow", "AU2": "brow", "AU4": "brow", "AU6": ("eye", "cheek"), "AU7": "eye",
            "AU10": "mouth", "AU12": "mouth", "AU15": "mouth", "AU23": "mouth", "AU24": "mouth",
            "AU25": "mouth", "AU26": "mouth"}


def _band_share(diff, bands):
    bands = (bands,) if isinstance(bands, str) else bands
    rows = np.zeros(112, bool)
    for b in bands:
        rows[slice(*_BANDS[b])] = True
    per_row = diff.sum(axis=(1, 2))
    return per_row[rows].sum() / per_row.sum()


@pytest.mark.parametrize("au", ACTION_UNITS)
def test_each_au_moves_its_part(au):
    for seed in range(3):
        idt = R.sample_identity(np.random.default_rng(seed))
        base = _clean(idt)
        on = np.zeros(12)
        on[ACTION_UNITS.index(au)] = 1.0
        diff = np.abs(_clean(idt, au=on) - base)
        assert diff.sum() > 200 * 3, f"{au} changes nothing"
        assert _band_share(diff, _AU_BAND[au]) > 0.8, au


def test_valence_and_arousal_drive_the_face():
    idt = R.sample_identity(np.random.default_rng(11))
    happy, sad = _clean(idt, valence=0.9), _clean(idt, valence=-0.9)
    d = np.abs(happy - sad)
    assert d.sum() > 0 and _band_share(d, "mouth") > 0.9
    calm, excited = _clean(idt, arousal=-0.9), _clean(idt, arousal=0.9)
    d = np.abs(excited - calm)
    assert _band_share(d, ("brow", "eye")) > 0.7
    # mouth corners go up for positive valence: dark lip pixels sit higher at the corners
    mouth = lambda img: img[70:112].mean(axis=2)
    lip_rows = lambda img: np.argmin(mouth(img)[:, 38:46], axis=0).mean()
    assert lip_rows(happy) < lip_rows(sad)


def test_blink_and_occluder_hide_parts():
    idt = R.sample_identity(np.random.default_rng(5))
    base = _clean(idt)
    assert _band_share(np.abs(_clean(idt, blink=1.0) - base), "eye") > 0.9
    occ = ("bar", 56, 90, 60, 30, (20.0, 200.0, 20.0))
    hidden = _clean(idt, occluder=occ)
    assert (np.abs(hidden[80:100, 30:80] - (20, 200, 20)).max(axis=2) < 2).all()


def test_render_alpha_matches_canvas_path():
    idt = R.sample_identity(np.random.default_rng(2))
    st = R.FaceState(0.3, 0.2, np.full(12, 0.7), roll=0.1, yaw=0.2, dx=2, dy=-1)
    bg = R.background(idt, 112)
    direct, none = R.render_face(idt, st, 112, canvas=bg.copy())
    rgb, alpha = R.render_face(idt, st, 112)
    assert none is None and alpha.max() == 255 and alpha[0, 0] == 0
    # compositing the layer gives the same picture except on the anti-aliased silhouette edge
    diff = np.abs(R.composite_u8(rgb, alpha, bg).astype(int) - direct).max(axis=2)
    kernel = np.ones((3, 3), np.uint8)
    inside = cv2.erode((alpha == 255).astype(np.uint8), kernel).astype(bool)
    outside = cv2.erode((alpha == 0).astype(np.uint8), kernel).astype(bool)
    assert inside.mean() > 0.3 and outside.mean() > 0.1
    assert diff[inside].max() == 0 and diff[outside].max() == 0


# ---------------------------------------------------------------------------------------------
# label dynamics


def test_label_dynamics():
    rng = np.random.default_rng(0)
    n = 3000
    tr = S.make_track(rng, n, (200.0, 160.0, 140.0))
    assert tr.va.min() >= -1 and tr.va.max() <= 1
    # smooth VA: frame-to-frame steps are small against the spread
    assert np.abs(np.diff(tr.va, axis=0)).mean() < 0.05 * tr.va.std(axis=0).min()
    # expression segments last seconds; several classes occur
    changes = np.flatnonzero(np.diff(tr.expr)) + 1
    lengths = np.diff(np.concatenate([[0], changes, [n]]))
    assert lengths[:-1].min() >= int(1.0 * S.FPS) and len(set(tr.expr)) >= 6
    # expressions consistent with VA and AUs
    va_of = lambda c: tr.va[tr.expr == c].mean(axis=0)
    assert va_of(4)[0] > 0.3 and va_of(5)[0] < -0.2 and va_of(6)[1] > 0.4 and va_of(5)[1] < 0
    au_rate = lambda c, au: tr.au[tr.expr == c, ACTION_UNITS.index(au)].mean()
    assert au_rate(4, "AU12") > 0.6 and au_rate(5, "AU12") < 0.2
    assert au_rate(6, "AU2") > 0.5 and au_rate(0, "AU2") < 0.2
    # AU events have onsets and offsets (not constant), and are binary
    assert set(np.unique(tr.au)) == {0, 1}
    assert (np.abs(np.diff(tr.au, axis=0)).sum(axis=0) >= 2).all()


def test_single_frames_are_noisy_but_time_averages_are_not():
    """Label-independent per-frame jitter: a moving average recovers the label-driven signal."""
    rng = np.random.default_rng(1)
    tr = S.make_track(rng, 3000, (200.0, 160.0, 140.0))
    signal = 0.11 * tr.va[:, 0] + 0.11 * tr.au_int[:, 6] - 0.12 * tr.au_int[:, 7]
    observed = signal + tr.jitter[:, 0]           # mouth curvature as drawn
    k = 15
    smooth = np.convolve(observed, np.ones(k) / k, mode="same")
    corr = lambda a, b: np.corrcoef(a[k:-k], b[k:-k])[0, 1]
    assert corr(observed, signal) < 0.9 < corr(smooth, signal)
    # part of arousal is only visible as motion: head-shake speed grows with arousal
    speed = np.linalg.norm(np.diff(tr.pose[:, :2], axis=0), axis=1)
    assert np.corrcoef(speed, tr.va[1:, 1])[0, 1] > 0.3


# ---------------------------------------------------------------------------------------------
# cache and command line


def test_ensure_synthetic_generates_once_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setitem(S.PRESETS, "tiny", dict(SMALL))
    calls = []
    real = S.generate
    monkeypatch.setattr(S, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        S.ensure_synthetic("tiny", root=tmp_path, progress=False))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = tmp_path / f"tiny-v{S.VERSION}"
    assert results == [expected] * 3 and len(calls) == 1
    stamp = (expected / "synthetic.json").stat().st_mtime_ns
    # a cache hit does no work: no generation, no rendering, not even the lock (which a
    # concurrent generation would hold for minutes)
    def no_work(what):
        def fail(*a, **k):
            raise AssertionError(f"a cache hit ran {what}")
        return fail
    for name in ("generate", "_run_jobs", "_make_source", "_file_lock"):
        monkeypatch.setattr(S, name, no_work(name))
    assert S.ensure_synthetic("tiny", root=tmp_path) == expected
    assert (expected / "synthetic.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == \
        [expected.name]
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        S.ensure_synthetic("huge", root=tmp_path)


def test_ensure_synthetic_uses_affaccel_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AFFACCEL_HOME", str(tmp_path / "home"))
    assert S.dataset_dir("default") == tmp_path / "home" / "synthetic" / f"default-v{S.VERSION}"


def test_incomplete_cache_folder_is_reported(tmp_path, monkeypatch):
    monkeypatch.setitem(S.PRESETS, "tiny", dict(SMALL))
    (tmp_path / f"tiny-v{S.VERSION}").mkdir()
    with pytest.raises(RuntimeError, match="no synthetic.json"):
        S.ensure_synthetic("tiny", root=tmp_path)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = S._main(["--out", str(out), "--preset", "tiny", "--n-train", "2", "--n-val", "1",
                  "--frames", "20", "22", "--raw-videos", "none", "--workers", "1", "--seed", "4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "3 videos (2 train, 1 val)" in printed
    m = json.loads((out / "synthetic.json").read_text())
    assert m["seed"] == 4 and m["raw_videos"] == {} and m["params"]["n_frames"] == [20, 22]
    with pytest.raises(FileExistsError):
        S._main(["--out", str(out), "--preset", "tiny", "--workers", "1"])
