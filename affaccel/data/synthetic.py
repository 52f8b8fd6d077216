"""Built-in synthetic dataset in the Aff-Wild2 layout: the default data of the main job.

``ensure_synthetic("default")`` returns a dataset directory under ``affaccel.env.home()``,
generating it on first use (into a temporary folder, then renamed, so a half-written set is never
seen) and reusing it afterwards. ``generate(out, ...)`` writes one anywhere;
``python -m affaccel.data.synthetic --out DIR`` does the same from the shell.

Layout written (identical to Aff-Wild2, read by ``affaccel.data.affwild2.load_affwild2``)::

    cropped_aligned/<video>/00001.jpg ...        112x112 JPEG face crops, some frames absent
    VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt     valence,arousal | -5,-5
    EXPR_Recognition_Challenge/{...}/<video>.txt  8-name header, one class id | -1
    AU_Detection_Challenge/{...}/<video>.txt      12-AU header, 0/1 each | -1 x 12
    videos/<source>.mp4, videos/<source>.webm     raw videos (H.264, VP9) for a subset
    videos/<video>.boxes.csv                      ground-truth face box per visible frame
    synthetic.json                                manifest (seed, preset, splits, which are raw)

How labels are made (per video, 30 fps): a sequence of expression segments of 1-3.5 s (Markov
chain over the 8 classes); valence/arousal follow the segment's prototype through a first-order
lag plus a slow Ornstein-Uhlenbeck drift; each segment switches on the action units typical of
its expression (onset/offset jittered, intensity ramps), plus rare spontaneous AU events; an
AU label is 1 where its intensity is >= 0.5. Appearance follows the labels (see ``_render``),
and single frames are made ambiguous on purpose: label-independent per-frame shape jitter,
sensor noise, blur, lighting flicker, flashes, blinks and brief hand/bar occlusions, and part of
the arousal signal is only in the head-shake speed. Averaging over time therefore improves
per-frame estimates, which is what the temporal model has to learn.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affaccel.tasks import SPLIT_DIRS, TASKS

VERSION = 1
FPS = 30
MANIFEST = "synthetic.json"

# n_train / n_val count annotated videos (a _left/_right pair counts twice); raw_videos says
# which source videos also get raw .mp4/.webm files: "val", "all", "none" or a count (taken
# from the validation split first). Encoding VP9 is the slow part, hence a subset.
PRESETS: dict[str, dict] = {
    "tiny": dict(n_train=5, n_val=3, n_frames=(60, 120), raw_videos="val"),
    "default": dict(n_train=40, n_val=10, n_frames=(200, 360), raw_videos=2),
    "large": dict(n_train=60, n_val=16, n_frames=(400, 900), raw_videos=4),
}

# expression -> (valence, arousal prototype, {AU index: probability of being on in a segment})
# AU indices follow affaccel.tasks.ACTION_UNITS: 0 AU1, 1 AU2, 2 AU4, 3 AU6, 4 AU7, 5 AU10,
# 6 AU12, 7 AU15, 8 AU23, 9 AU24, 10 AU25, 11 AU26. Profiles follow FACS/EMFACS prototypes.
_EXPR_PROFILE = {
    0: (0.0, -0.15, {}),                                       # Neutral
    1: (-0.6, 0.65, {2: 0.9, 4: 0.8, 8: 0.6, 9: 0.5}),         # Anger: AU4 AU7 AU23 AU24
    2: (-0.65, 0.35, {2: 0.5, 5: 0.9, 7: 0.6}),                # Disgust: AU4 AU10 AU15
    3: (-0.55, 0.75, {0: 0.8, 1: 0.7, 2: 0.6, 10: 0.7}),       # Fear: AU1 AU2 AU4 AU25
    4: (0.75, 0.4, {3: 0.85, 6: 0.95, 10: 0.5}),               # Happiness: AU6 AU12 AU25
    5: (-0.6, -0.45, {0: 0.8, 2: 0.6, 7: 0.8}),                # Sadness: AU1 AU4 AU15
    6: (0.25, 0.8, {0: 0.9, 1: 0.9, 10: 0.9, 11: 0.8}),        # Surprise: AU1 AU2 AU25 AU26
    7: (None, None, {}),                                       # Other: random VA, random AUs
}
_EXPR_FREQ = np.array([0.22, 0.1, 0.08, 0.08, 0.16, 0.11, 0.11, 0.14])
_OTHER_AUS = (1, 4, 5, 9, 11)


# ----------------------------------------------------------------------------------------------
# label dynamics


def _lag(x: np.ndarray, alpha: float) -> np.ndarray:
    """First-order low-pass along axis 0 (y[t] = y[t-1] + alpha (x[t] - y[t-1])), y[0] = x[0]."""
    y = np.empty_like(x)
    y[0] = x[0]
    for t in range(1, len(x)):
        y[t] = y[t - 1] + alpha * (x[t] - y[t - 1])
    return y


def _ou(rng: np.random.Generator, n: int, dims: int, tau_s: float, std: float) -> np.ndarray:
    """Stationary Ornstein-Uhlenbeck process [n, dims] with time constant tau_s and given std."""
    a = np.exp(-1.0 / (tau_s * FPS))
    e = rng.standard_normal((n, dims)) * std * np.sqrt(1 - a * a)
    x = np.empty((n, dims))
    x[0] = rng.standard_normal(dims) * std
    for t in range(1, n):
        x[t] = a * x[t - 1] + e[t]
    return x


def _segments(rng: np.random.Generator, n: int) -> list[tuple[int, int, int, float]]:
    """Expression segments (start, end, class, strength) covering [0, n)."""
    segs, t, prev = [], 0, -1
    while t < n:
        p = _EXPR_FREQ.copy()
        if prev >= 0:
            p[prev] = 0.0
        c = int(rng.choice(8, p=p / p.sum()))
        d = int(rng.uniform(1.0, 3.5) * FPS)
        segs.append((t, min(n, t + d), c, float(rng.uniform(0.55, 1.0))))
        t, prev = t + d, c
    return segs


def _events(rng, n, rate_per_s, dur_s) -> list[tuple[int, int]]:
    """Poisson events [(start, end)] with durations uniform in dur_s seconds."""
    out = []
    for _ in range(rng.poisson(rate_per_s * n / FPS)):
        s = int(rng.integers(0, n))
        out.append((s, min(n, s + max(1, int(rng.uniform(*dur_s) * FPS)))))
    return out


@dataclass
class Track:
    """Labels and per-frame rendering state of one annotated video (one face). Arrays are [T, ...]."""
    expr: np.ndarray        # int64 [T], 0..7
    va: np.ndarray          # float64 [T, 2], rounded to 3 decimals
    au_int: np.ndarray      # float64 [T, 12], intensities in [0, 1]
    au: np.ndarray          # int64 [T, 12], au_int >= 0.5
    blink: np.ndarray       # [T]
    pose: np.ndarray        # [T, 5] dx, dy (px), roll, yaw (rad), scale
    jitter: np.ndarray      # [T, 3] curve, brow, eye
    gain: np.ndarray        # [T] lighting gain
    noise: np.ndarray       # [T] sensor noise sigma
    blur: np.ndarray        # [T] Gaussian blur sigma (0 = none)
    occluders: list         # [(start, end, kind, (x0, y0), (x1, y1), w, h, colour)]


def make_track(rng: np.random.Generator, n: int, skin: tuple) -> Track:
    """Draw the labels and nuisances of one video of ``n`` frames."""
    segs = _segments(rng, n)
    expr = np.empty(n, np.int64)
    va_target = np.empty((n, 2))
    au_target = np.zeros((n, 12))
    for s, e, c, k in segs:
        expr[s:e] = c
        v0, a0, profile = _EXPR_PROFILE[c]
        if c == 7:   # "Other": an unusual mix
            v0, a0 = rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.6)
            profile = {int(i): 0.6 for i in rng.choice(_OTHER_AUS, 2, replace=False)}
        va_target[s:e] = (v0 * k + rng.normal(0, 0.08), a0 * k + rng.normal(0, 0.08))
        for au, p in profile.items():
            if rng.random() < p:
                on = min(e - 1, s + int(rng.uniform(0.0, 0.5) * FPS))
                off = max(on + 3, min(n, e + int(rng.uniform(-0.4, 0.2) * FPS)))
                au_target[on:off, au] = np.maximum(au_target[on:off, au],
                                                   min(1.0, rng.uniform(0.6, 1.0) * (0.6 + 0.4 * k)))
    for au in range(12):   # spontaneous AU events, independent of the expression
        for s, e in _events(rng, n, 1 / 25, (0.3, 1.2)):
            au_target[s:e, au] = np.maximum(au_target[s:e, au], rng.uniform(0.6, 1.0))

    # expression-driven target through a lag, plus a slow drift (OU smoothed again: an OU path
    # alone is rough frame to frame, annotated VA traces are not)
    drift = _lag(_ou(rng, n, 2, 2.0, 0.14), 1.0 / (0.3 * FPS))
    va = _lag(va_target, 1.0 / (0.35 * FPS)) + drift
    va = np.round(np.clip(va, -1, 1), 3) + 0.0            # + 0.0: no "-0.000" in the files
    # symmetric ramps: forward then backward lag, ~0.1 s onset and offset
    alpha = 1.0 / (0.1 * FPS)
    au_int = np.clip(_lag(_lag(au_target, alpha)[::-1], alpha)[::-1] * 1.15, 0, 1)
    au = (au_int >= 0.5).astype(np.int64)

    blink = np.zeros(n)
    t = int(rng.uniform(0.5, 3) * FPS)
    while t < n:   # blinks every 2-5 s hide the eyes for ~5 frames
        prof = np.array([0.5, 1.0, 1.0, 0.6, 0.2])
        blink[t:t + 5] = prof[:len(blink[t:t + 5])]
        t += int(rng.uniform(2, 5) * FPS)

    arousal01 = 0.5 * (va[:, 1] + 1)
    slow = _ou(rng, n, 5, 1.5, 1.0) * (2.5, 2.0, 0.06, 0.18, 0.03)
    shake = rng.standard_normal((n, 3)) * (0.2 + 1.3 * arousal01)[:, None] * (1.0, 1.0, 0.015)
    pose = slow.copy()
    pose[:, :3] += shake                  # head-shake speed carries arousal: only seen in motion
    pose[:, 4] += 1.0
    jitter = rng.standard_normal((n, 3)) * (0.07, 0.045, 0.2)

    gain = 1.0 + _ou(rng, n, 1, 3.0, 0.08)[:, 0] + rng.normal(0, 0.03, n)
    for s, e in _events(rng, n, 1 / 12, (0.05, 0.15)):     # camera flashes / glare
        gain[s:e] *= rng.uniform(1.25, 1.45)
    noise = rng.uniform(6, 18) * rng.uniform(0.8, 1.2, n)
    for s, e in _events(rng, n, 1 / 10, (0.1, 0.4)):       # transient heavy noise (bad frames)
        noise[s:e] *= 2.5
    blur = np.where(rng.random(n) < 0.12, rng.uniform(0.6, 1.4, n), 0.0)

    occluders = []
    for s, e in _events(rng, n, 1 / 8, (0.3, 1.2)):
        kind = "hand" if rng.random() < 0.6 else "bar"
        target = [(56, 90), (56, 52), (35, 65), (78, 65)][rng.integers(4)]
        x0 = (target[0] + rng.uniform(-30, 30), target[1] + rng.uniform(-20, 20))
        x1 = (target[0] + rng.uniform(-8, 8), target[1] + rng.uniform(-6, 6))
        col = (tuple(float(c) for c in np.clip(np.asarray(skin) * rng.uniform(0.85, 1.1), 0, 255))
               if kind == "hand" else tuple(float(c) for c in rng.uniform(20, 230, 3)))
        occluders.append((s, e, kind, x0, x1, rng.uniform(45, 70), rng.uniform(28, 45), col))
    return Track(expr, va, au_int, au, blink, pose, jitter, gain, noise, blur, occluders)


def _occluder_at(track: Track, t: int):
    for s, e, kind, x0, x1, w, h, col in track.occluders:
        if s <= t < e:
            f = (t - s) / max(1, e - s - 1)
            return (kind, x0[0] + f * (x1[0] - x0[0]), x0[1] + f * (x1[1] - x0[1]), w, h, col)
    return None


def face_state(track: Track, t: int):
    """The renderer's FaceState of frame ``t``."""
    from affaccel.data._render import FaceState

    p = track.pose[t]
    return FaceState(
        valence=float(track.va[t, 0]), arousal=float(track.va[t, 1]), au=track.au_int[t],
        blink=float(track.blink[t]), dx=float(p[0]), dy=float(p[1]), roll=float(p[2]),
        yaw=float(p[3]), scale=float(p[4]), curve_jitter=float(track.jitter[t, 0]),
        brow_jitter=float(track.jitter[t, 1]), eye_jitter=float(track.jitter[t, 2]),
        occluder=_occluder_at(track, t))


def _missing_runs(rng, n: int, force_leading: bool) -> np.ndarray:
    """Frames with no face crop (detector failed): bool [T]."""
    miss = np.zeros(n, bool)
    if force_leading:
        miss[:3] = True
    if rng.random() < 0.5:
        for _ in range(rng.integers(1, 4)):
            s = int(rng.integers(1, n))
            miss[s:s + int(rng.integers(1, 11))] = True
    if miss.all():   # keep at least one image per video
        miss[-1] = False
    return miss


def _unannotated(rng, n: int, force: bool = False) -> np.ndarray:
    """Frames a task's annotators skipped: bool [T] (True = written as the invalid marker).
    ``force``: always at least one stretch (the first video of each split shows every case)."""
    bad = np.zeros(n, bool)
    if rng.random() < 0.35 or force:
        for _ in range(rng.integers(1, 3)):
            s = int(rng.integers(0, n))
            bad[s:s + int(rng.uniform(1, 3) * FPS)] = True
    return bad


# ----------------------------------------------------------------------------------------------
# writing


def _annotation_text(task: str, track: Track, bad: np.ndarray) -> str:
    spec = TASKS[task]
    lines = [",".join(spec.columns)]
    if task == "va":
        lines += ["-5,-5" if b else f"{v:.3f},{a:.3f}" for (v, a), b in zip(track.va, bad)]
    elif task == "expr":
        lines += ["-1" if b else str(int(c)) for c, b in zip(track.expr, bad)]
    else:
        inv = ",".join(["-1"] * 12)
        lines += [inv if b else ",".join(map(str, row)) for row, b in zip(track.au, bad)]
    return "\n".join(lines) + "\n"


@dataclass
class _SourceJob:
    out: str
    seed: int
    index: int              # global source-video index (identity and RNG stream)
    source: str
    videos: list            # annotated ids: [source] or [source_left, source_right]
    split: str
    n_frames: int
    image_size: int
    raw: bool
    video_size: tuple
    force_leading_missing: bool
    all_tasks: bool         # the split's first source carries every task


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def _faces(job: _SourceJob) -> list[dict]:
    """Identity, labels and nuisances of each face of a source video (no rendering)."""
    from affaccel.data import _render as R

    n, size = job.n_frames, job.image_size
    faces = []
    for k, vid in enumerate(job.videos):
        rng = _rng(job.seed, job.index, k, 0)
        idt = R.sample_identity(rng)
        track = make_track(rng, n, idt.skin)
        missing = _missing_runs(rng, n, job.force_leading_missing and k == 0)
        tasks = [t for t in TASKS if job.all_tasks or rng.random() >= 0.1] or ["va"]
        bad = {t: _unannotated(rng, n, force=job.all_tasks) for t in TASKS}
        faces.append(dict(id=vid, idt=idt, track=track, missing=missing, tasks=tasks, bad=bad,
                          light=R.light_map(rng, size, rng.uniform(0.05, 0.3)),
                          bg=R.background(idt, size), rng=_rng(job.seed, job.index, k, 1),
                          bank=R.NoiseBank(_rng(job.seed, job.index, k, 2), size)))
    return faces


def _jobs(out, seed, plan, image_size, video_size) -> list[_SourceJob]:
    return [_SourceJob(str(out), seed, p["index"], p["source"], p["videos"], p["split"],
                       p["n_frames"], image_size, p["raw"], tuple(video_size), p["force_leading"],
                       p["all_tasks"]) for p in plan]


def reference_labels(root: str | os.PathLike) -> dict[str, dict]:
    """The generator's own labels of a synthetic set, recomputed from its manifest (no files read
    but synthetic.json): video -> dict(split, source_video, n_frames, tasks, va [T,2] float64,
    expr [T] int64, au [T,12] int64, au_intensity [T,12], unannotated {task: bool [T]},
    missing bool [T]). Tests compare the reader's output with this, exactly.
    """
    m = json.loads((Path(root) / MANIFEST).read_text())
    prm = m["params"]
    plan = _plan(prm["n_train"], prm["n_val"], tuple(prm["n_frames"]), m["seed"],
                 _parse_raw_spec(prm["raw_videos"]))
    out = {}
    for job in _jobs(root, m["seed"], plan, m["image_size"], m["video_size"]):
        for f in _faces(job):
            tr = f["track"]
            out[f["id"]] = dict(split=job.split, source_video=job.source, n_frames=job.n_frames,
                                tasks=f["tasks"], va=tr.va, expr=tr.expr, au=tr.au,
                                au_intensity=tr.au_int, missing=f["missing"],
                                unannotated={t: f["bad"][t] for t in f["tasks"]})
    return out


def _make_source(job: _SourceJob) -> dict:
    """Render and write one source video (one or two annotated faces). Returns its manifest."""
    import cv2

    from affaccel.data import _render as R

    cv2.setNumThreads(1)   # parallelism is across videos; OpenCV's own threads only contend
    out, n, size = Path(job.out), job.n_frames, job.image_size
    faces = _faces(job)

    for f in faces:
        for task in f["tasks"]:
            d = out / TASKS[task].annotation_dirs[0] / SPLIT_DIRS[job.split]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{f['id']}.txt").write_text(_annotation_text(task, f["track"], f["bad"][task]))
        (out / "cropped_aligned" / f["id"]).mkdir(parents=True, exist_ok=True)

    writer = _RawVideoWriter(out, job, faces) if job.raw else None
    jpeg = [int(cv2.IMWRITE_JPEG_QUALITY), 90]
    for t in range(n):
        layers = []
        for f in faces:
            tr = f["track"]
            st = face_state(tr, t)
            if writer is not None:   # one render serves the crop and the raw-video frame
                rgb, alpha = R.render_face(f["idt"], st, size)
                layers.append((rgb, alpha))
                canvas = R.composite_u8(rgb, alpha, f["bg"])
            else:
                canvas, _ = R.render_face(f["idt"], st, size, canvas=f["bg"].copy())
            crop = R.finish_crop(canvas, f["light"] * np.float32(tr.gain[t]), tr.noise[t],
                                 tr.blur[t], f["rng"], f["bank"])
            if not f["missing"][t]:
                ok, buf = cv2.imencode(".jpg", crop[..., ::-1], jpeg)
                (out / "cropped_aligned" / f["id"] / f"{t + 1:05d}.jpg").write_bytes(buf.tobytes())
        if writer is not None:
            writer.add(t, layers)
    raw = writer.close() if writer is not None else None

    return dict(source=job.source, raw=raw, videos={
        f["id"]: dict(split=job.split, source_video=job.source, n_frames=n, tasks=f["tasks"],
                      identity=job.index * 2 + k, raw_video=job.raw,
                      missing_frames=[int(i) for i in np.flatnonzero(f["missing"])],
                      unannotated={t: int(f["bad"][t].sum()) for t in f["tasks"]})
        for k, f in enumerate(faces)})


class _RawVideoWriter:
    """The faces moving inside a larger scene, encoded to H.264 (.mp4) and VP9 (.webm) at once.

    Box of a face = the square the 112x112 crop layer was resized into: cutting it out of the
    frame and resizing to 112 gives (the noise-free version of) that frame's crop. Frames whose
    crop is missing show the face fully covered by an object, and have no box row.
    """

    def __init__(self, out: Path, job: _SourceJob, faces: list):
        import av
        import cv2

        self.cv2 = cv2
        self.faces = faces
        W, H = self.W, self.H = job.video_size
        rng = _rng(job.seed, job.index, 9, 0)
        self.scene = _scene(rng, W, H)
        self.noise_bank = rng.normal(0, 4, (4, H, W, 3)).astype(np.int16)
        self.pick = rng.integers(0, 4, job.n_frames)
        n = job.n_frames
        self.boxes = []
        for k, f in enumerate(faces):
            size = np.clip(rng.uniform(120, 165) * (1 + _ou(rng, n, 1, 2.0, 0.06)[:, 0]), 90,
                           min(H, W // len(faces)) - 4).astype(int)
            lo = 0 if len(faces) == 1 else k * W // 2
            hi = W if len(faces) == 1 else (k + 1) * W // 2
            pos = 0.5 + _ou(rng, n, 2, 2.5, 0.3)   # fraction of the free range
            x = lo + np.clip(pos[:, 0], 0, 1) * (hi - lo - size)
            y = np.clip(pos[:, 1], 0, 1) * (H - size)
            self.boxes.append(np.stack([x.astype(int), y.astype(int), size, size], 1))
        videos = out / "videos"
        videos.mkdir(parents=True, exist_ok=True)
        self.paths = {"mp4": videos / f"{job.source}.mp4", "webm": videos / f"{job.source}.webm"}
        self.containers, self.streams = [], []
        for ext, codec, opts in (("mp4", "libx264", {"preset": "veryfast", "crf": "23"}),
                                 ("webm", "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8",
                                                         "row-mt": "1", "lag-in-frames": "0"})):
            c = av.open(str(self.paths[ext]), "w")
            s = c.add_stream(codec, rate=FPS)
            s.width, s.height, s.pix_fmt = W, H, "yuv420p"
            if codec == "libvpx-vp9":
                s.bit_rate = 1_500_000
            s.options = opts
            self.containers.append(c)
            self.streams.append(s)
        self.job = job
        self.av = av

    def add(self, t: int, layers: list) -> None:
        frame = self.scene.copy()
        for (rgb, alpha), f, boxes in zip(layers, self.faces, self.boxes):
            x, y, w, h = boxes[t]
            region = frame[y:y + h, x:x + w]
            rgb = self.cv2.resize(rgb, (w, h), interpolation=self.cv2.INTER_LINEAR)
            alpha = self.cv2.resize(alpha, (w, h), interpolation=self.cv2.INTER_LINEAR)
            from affaccel.data._render import composite_u8
            region[:] = composite_u8(rgb, alpha, region)
            if f["missing"][t]:   # the face is hidden: that is why the crop is missing
                region[h // 8:, :] = (90, 80, 75)
        frame = np.clip(frame + self.noise_bank[self.pick[t]], 0, 255).astype(np.uint8)
        vf = self.av.VideoFrame.from_ndarray(frame, format="rgb24")
        vf.pts = t
        for c, s in zip(self.containers, self.streams):
            for packet in s.encode(vf):
                c.mux(packet)

    def close(self) -> dict:
        for c, s in zip(self.containers, self.streams):
            for packet in s.encode():
                c.mux(packet)
            c.close()
        boxes = {}
        for f, b in zip(self.faces, self.boxes):
            path = self.paths["mp4"].parent / f"{f['id']}.boxes.csv"
            rows = ["frame,x,y,w,h"] + [f"{t},{x},{y},{w},{h}" for t, (x, y, w, h) in enumerate(b)
                                        if not f["missing"][t]]
            path.write_text("\n".join(rows) + "\n")
            boxes[f["id"]] = f"videos/{path.name}"
        return dict(mp4=f"videos/{self.paths['mp4'].name}", webm=f"videos/{self.paths['webm'].name}",
                    boxes=boxes, n_frames=self.job.n_frames, fps=FPS,
                    size=[self.W, self.H])


def _scene(rng, W: int, H: int) -> np.ndarray:
    """A room-like background: gradient wall, floor, a few furniture blocks. uint8 [H, W, 3]."""
    import cv2

    wall = rng.uniform(60, 200, 3)
    t = np.linspace(0, 1, H)[:, None, None]
    img = (wall * (1.1 - 0.3 * t) * np.ones((1, W, 1))).astype(np.float32)
    floor = int(H * rng.uniform(0.65, 0.85))
    img[floor:] = rng.uniform(40, 150, 3)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(3, 7)):
        x, y = int(rng.integers(0, W)), int(rng.integers(0, H))
        w, h = int(rng.integers(20, W // 3)), int(rng.integers(20, H // 2))
        col = tuple(float(c) for c in rng.uniform(20, 235, 3))
        if rng.random() < 0.7:
            cv2.rectangle(img, (x, y), (x + w, y + h), col, -1)
        else:
            cv2.ellipse(img, (x, y), (w // 2, h // 2), 0, 0, 360, col, -1, cv2.LINE_AA)
    return img


# ----------------------------------------------------------------------------------------------
# dataset


def _plan(n_train: int, n_val: int, n_frames: tuple, seed: int, raw_videos) -> list[dict]:
    """Source videos per split: a _left/_right pair first (when the split has >= 2 videos)."""
    rng = _rng(seed, 0xDA7A)
    plan, index = [], 0
    for split, n in (("train", n_train), ("val", n_val)):
        left = n
        first = True
        while left > 0:
            pair = first and n >= 2
            name = f"synth{index:03d}"
            plan.append(dict(split=split, index=index, source=name,
                             videos=[f"{name}_left", f"{name}_right"] if pair else [name],
                             n_frames=int(rng.integers(n_frames[0], n_frames[1] + 1)),
                             all_tasks=first, force_leading=(first and split == "train")))
            left -= 2 if pair else 1
            index += 1
            first = False
    val = [p for p in plan if p["split"] == "val"]
    train = [p for p in plan if p["split"] == "train"]
    if raw_videos == "all":
        chosen = plan
    elif raw_videos == "val":
        chosen = val
    elif raw_videos in ("none", 0, None):
        chosen = []
    else:
        chosen = (val + train)[:int(raw_videos)]
    for p in plan:
        p["raw"] = any(p is c for c in chosen)
    return plan


def _parse_raw_spec(value):
    if isinstance(value, str) and value not in ("val", "all", "none"):
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"raw_videos must be 'val', 'all', 'none' or a count, got {value!r}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"raw_videos count must be >= 0, got {value}")
    return value


def generate(out: str | os.PathLike, *, n_train: int = 40, n_val: int = 10,
             n_frames: tuple[int, int] = (200, 360), seed: int = 0, image_size: int = 112,
             raw_videos="val", video_size: tuple[int, int] = (480, 360),
             workers: int | None = None, preset: str = "custom", overwrite: bool = False,
             progress: bool = True) -> Path:
    """Write a synthetic Aff-Wild2-format dataset to ``out`` and return its path.

    n_train / n_val: annotated videos per split (a _left/_right pair counts as two);
    n_frames: (min, max) frames per video, drawn per source video; image_size: crop side;
    raw_videos: "val" | "all" | "none" | N (first N source videos, validation first) that also
    get raw H.264/VP9 videos of ``video_size`` (W, H) with box files; workers: processes
    (default: min(4, CPUs)). The set is built in a temporary sibling folder and renamed onto
    ``out`` at the end, so ``out`` is either absent or complete.
    """
    out = Path(out)
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train}, {n_val}")
    lo, hi = (int(n_frames[0]), int(n_frames[1]))
    if not 2 <= lo <= hi:
        raise ValueError(f"n_frames must be (min, max) with 2 <= min <= max, got {n_frames}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    W, H = (int(video_size[0]), int(video_size[1]))
    if W % 2 or H % 2 or min(W, H) < 200:
        raise ValueError(f"video_size must be even and >= 200 px each side, got {video_size}")
    raw_videos = _parse_raw_spec(raw_videos)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")

    plan = _plan(n_train, n_val, (lo, hi), seed, raw_videos)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        metas = _run_jobs(_jobs(tmp, seed, plan, image_size, (W, H)), workers, progress)
        manifest = dict(
            format="affaccel-synthetic", version=VERSION, preset=preset, seed=seed, fps=FPS,
            image_size=image_size, video_size=[W, H],
            params=dict(n_train=n_train, n_val=n_val, n_frames=[lo, hi], raw_videos=raw_videos),
            splits={s: [v for m in metas for v in m["videos"] if m["videos"][v]["split"] == s]
                    for s in ("train", "val")},
            videos={v: info for m in metas for v, info in m["videos"].items()},
            raw_videos={m["source"]: m["raw"] for m in metas if m["raw"] is not None},
        )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out) if overwrite else out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _run_jobs(jobs: list[_SourceJob], workers: int | None, progress: bool) -> list[dict]:
    """Run the per-source jobs (raw-video ones first: they take longest), sorted back by index."""
    from tqdm.auto import tqdm

    workers = workers or min(4, os.cpu_count() or 1)
    order = sorted(jobs, key=lambda j: (not j.raw, -j.n_frames * len(j.videos)))
    bar = tqdm(total=len(jobs), desc="synthetic videos", unit="video", disable=not progress)
    metas = []
    if workers <= 1:
        for j in order:
            metas.append(_make_source(j))
            bar.update()
    else:
        import multiprocessing as mp

        # spawn: the parent may hold torch/DALI threads, which fork does not copy safely
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            for fut in as_completed([ex.submit(_make_source, j) for j in order]):
                metas.append(fut.result())
                bar.update()
    bar.close()
    return sorted(metas, key=lambda m: m["source"])


def dataset_dir(preset: str = "default", root: str | os.PathLike | None = None) -> Path:
    """Where ``ensure_synthetic`` keeps a preset: <root or AFFACCEL_HOME/synthetic>/<preset>-v<N>."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; expected one of {sorted(PRESETS)}")
    if root is None:
        from affaccel import env

        root = env.home() / "synthetic"
    return Path(root) / f"{preset}-v{VERSION}"


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive advisory lock (POSIX flock); a no-op where fcntl does not exist."""
    try:
        import fcntl
    except ImportError:   # pragma: no cover - non-POSIX: the atomic rename still protects us
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_synthetic(preset: str = "default", root: str | os.PathLike | None = None,
                     seed: int = 0, progress: bool = True) -> Path:
    """Return the dataset folder of ``preset``, generating it on first use (atomic, locked)."""
    out = dataset_dir(preset, root)
    if seed != 0:
        out = out.with_name(f"{out.name}-seed{seed}")
    if (out / MANIFEST).is_file():
        return out
    with _file_lock(out.with_name(f".{out.name}.lock")):
        if (out / MANIFEST).is_file():      # another process finished it while we waited
            return out
        if out.exists():
            raise RuntimeError(f"{out} exists but has no {MANIFEST}: not a complete synthetic "
                               "set (delete it to regenerate)")
        generate(out, seed=seed, preset=preset, progress=progress, **PRESETS[preset])
    return out


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m affaccel.data.synthetic",
        description="Write the built-in synthetic Aff-Wild2-format dataset.")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="size preset; the options below override its values")
    p.add_argument("--n-train", type=int, help="annotated training videos")
    p.add_argument("--n-val", type=int, help="annotated validation videos")
    p.add_argument("--frames", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="frames per video, drawn uniformly in [MIN, MAX]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=112, help="side of the face crops")
    p.add_argument("--raw-videos", help="'val', 'all', 'none' or a count of source videos")
    p.add_argument("--video-size", type=int, nargs=2, metavar=("W", "H"), default=(480, 360))
    p.add_argument("--workers", type=int, help="processes (default min(4, CPUs))")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--layout", choices=("flat", "shipped"), default="flat",
                   help="flat: one root (annotation folders + cropped_aligned); shipped: as the ABAW "
                        "archives unpack (8th_ABAW_Annotations/, nested frames, test lists and sample files; "
                        "affaccel.data.shipped)")
    a = p.parse_args(argv)
    kw = dict(PRESETS[a.preset])
    for key, val in (("n_train", a.n_train), ("n_val", a.n_val), ("n_frames", a.frames),
                     ("raw_videos", a.raw_videos)):
        if val is not None:
            kw[key] = val
    t0 = time.perf_counter()
    gen = dict(seed=a.seed, image_size=a.image_size, video_size=tuple(a.video_size), workers=a.workers,
               preset=a.preset, **kw)
    if a.layout == "shipped":
        from affaccel.data.shipped import write_shipped

        if a.overwrite and Path(a.out).exists():
            shutil.rmtree(a.out)
        with tempfile.TemporaryDirectory(dir=Path(a.out).resolve().parent) as tmp:
            write_shipped(generate(Path(tmp) / "flat", **gen), a.out)
        print(f"wrote {a.out} in the shipped layout in {time.perf_counter() - t0:.1f} s")
        return 0
    out = generate(a.out, overwrite=a.overwrite, **gen)
    m = json.loads((out / MANIFEST).read_text())
    frames = sum(v["n_frames"] for v in m["videos"].values())
    print(f"wrote {out}: {len(m['videos'])} videos ({len(m['splits']['train'])} train, "
          f"{len(m['splits']['val'])} val), {frames} frames, raw videos "
          f"{sorted(m['raw_videos'])} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
