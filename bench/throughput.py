"""End-to-end throughput: affaccel's pipeline against a naive one, stage by stage, same videos.

    python bench/throughput.py                 # full run (default synthetic preset, 3 repeats)
    python bench/throughput.py --quick         # CI-sized: 'tiny' synthetic set, 1 repeat
    python bench/throughput.py --videos a.mp4 b.webm [--boxes a.csv b.csv] --bundle B.pt

Pipelines (both read the same bundle and the same videos, and are checked to give the same
per-frame predictions):
  optimized  ``AffectPredictor.predict_video(path)`` as ``python -m affaccel.predict`` runs it:
             its decode thread (affaccel/inference/overlap.py; ``iter_video`` backend "auto":
             PyAV with frame threading on CPU, DALI/NVDEC on GPU with given boxes),
             batched crops (DALI), ClipEncoder under ``inference_mode`` (bf16 autocast on
             CUDA; fp32 on CPU, channels-last for ResNet towers), C++ windows, TCN (fused Triton
             on CUDA, channels-first on CPU), Transformer, C++ overlap averaging. Also timed
             without the decode thread ("serial"), so whether the overlap helps is measured;
             the serial run carries the stage timers.
  naive      bench/_naive_pipeline.py: PyAV frame by frame to PIL, per-frame PIL crop +
             torchvision transforms, open_clip fp32 eager (batch 64), Python window and
             averaging loops, eager nn.Conv1d+chomp TCN with the same weights.
  int8       (CPU; --no-int8 skips it) the optimized pipeline with ``predict --int8``'s encoder
             (affaccel/nn/quantize.py), its own row, never the optimized one.
  naive_bf16 (GPU; --naive-bf16 on CPU) the naive pipeline under bf16 autocast: what precision
             alone buys, so the table shows what the pipeline adds beyond it.
Faces: ``--faces boxes`` (default on the synthetic set: its ground-truth box files, the
"user boxes" input of both pipelines) or ``--faces detect`` (the built-in Haar detector and
tracker, the same code in both pipelines, so the face stage compares like with like).
Without ``--bundle`` a bundle is built from a random-init encoder and temporal models; the
throughput does not depend on the weights' values.

Timing: one warm-up run of each pipeline, then ``--repeats`` rounds, each running every
configuration once in a rotating order (so load noise on a shared machine hits all of them);
medians are reported. Stage figures are frames / seconds spent in the stage. Prints a table
last, writes ``--json``, appends a row to bench/results/throughput_<cpu|gpu>.csv. Also reported:
the load average (1/5/15 min) at the start and end of the timed rounds, and the limits: encoder
alone and decode alone (serial run's stages), pipeline efficiency = end to end / encoder alone,
and the cores' utilisation during the overlapped run (process CPU seconds / wall / cores).
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for p in (str(ROOT), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

from affaccel.inference.overlap import PrefetchStats  # noqa: E402

from _flops import VIT_B16_GFLOP, bf16_matmul_peak_tflops, encoder_gflop, roofline_fraction  # noqa: E402
from _machine import (  # noqa: E402
    StageClock,
    Stopwatch,
    cpu_model,
    git_commit,
    median,
    rotated,
)

STAGES = ("decode", "faces", "encoder", "temporal", "averaging")
CSV_FIELDS = ["date", "commit", "machine", "device", "cores", "torch_threads", "torch", "triton",
              "dali", "av",
              "model", "image_size", "faces", "videos", "frames", "repeats", "optimized_fps",
              "optimized_serial_fps", "naive_fps", "speedup", "overlap_gain",
              *[f"opt_{s}_fps" for s in STAGES], *[f"naive_{s}_fps" for s in STAGES],
              "encoder_roofline", "opt_peak_mem_mb", "naive_peak_mem_mb", "parity_max_abs",
              "loadavg_1min_start", "loadavg_1min_end", "encoder_alone_fps", "decode_alone_fps",
              "pipeline_efficiency", "core_utilisation", "int8_fps", "int8_max_abs",
              "int8_feature_cosine_min", "naive_bf16_fps", "cpu_bound_fps", "efficiency_ceiling",
              "cpu_bound_fps_all", "speedup_ceiling"]


@dataclass
class Job:
    """One video and its faces: boxes [T, 4] (NaN rows = no face) or None (detect)."""
    path: Path
    boxes: np.ndarray | None


# --------------------------------------------------------------------------------------------
# inputs


def synthetic_jobs(preset: str) -> list[Job]:
    """Every raw video (H.264 .mp4 and VP9 .webm) of a synthetic preset, with the ground-truth
    boxes of its first subject."""
    from affaccel.data.synthetic import MANIFEST, ensure_synthetic
    from affaccel.faces.boxes import read_boxes_csv

    root = ensure_synthetic(preset)
    manifest = json.loads((root / MANIFEST).read_text())
    jobs = []
    for src, info in sorted(manifest["raw_videos"].items()):
        subject = sorted(info["boxes"])[0]
        boxes = read_boxes_csv(root / info["boxes"][subject])
        for key in ("mp4", "webm"):
            if info.get(key):
                jobs.append(Job(root / info[key], boxes))
    if not jobs:
        raise ValueError(f"synthetic preset {preset!r} at {root} has no raw videos")
    return jobs


def user_jobs(videos: list[str], boxes: list[str] | None) -> list[Job]:
    from affaccel.faces.boxes import read_boxes_csv

    if boxes and len(boxes) != len(videos):
        raise ValueError(f"--boxes: {len(boxes)} files for {len(videos)} --videos (one each)")
    out = []
    for i, v in enumerate(videos):
        if not Path(v).is_file():
            raise ValueError(f"--videos: {v} is not a file")
        out.append(Job(Path(v), read_boxes_csv(boxes[i]) if boxes else None))
    return out


def build_bundle(path: Path, model: str, preset: str) -> Path:
    """A bundle of a random-init encoder and va/expr/au temporal models (paper window)."""
    import torch

    from affaccel.bundle import save_bundle
    from affaccel.config import ClipConfig, WindowConfig, make_config
    from affaccel.nn.clip import build_encoder
    from affaccel.nn.temporal import TemporalModel

    torch.manual_seed(0)
    enc = build_encoder(ClipConfig(model_name=model, init_seed=0))
    tasks = {}
    for t in ("va", "expr", "au"):
        cfg = make_config(t, preset, model={"in_dim": enc.feature_dim},
                          window={"window": 300, "stride": 200})
        tasks[t] = (TemporalModel(cfg.model).eval(), cfg, {})
    return save_bundle(path, window=WindowConfig(300, 200), tasks=tasks, encoder=enc)


# --------------------------------------------------------------------------------------------
# measurement helpers


class PeakRSS:
    """Highest resident set size (bytes) of this process while the context is open, sampled
    every 5 ms from /proc/self/statm (falls back to ru_maxrss where /proc is missing)."""

    def __enter__(self):
        self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def _rss(self) -> int:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _loop(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


class CpuStageClock(StageClock):
    """A StageClock that also adds up process CPU seconds (all threads) per stage: in the
    serial run one stage runs at a time, so a stage's CPU seconds are the core-seconds it
    needs (PyAV's frame threads included), the base of the CPU-bound ceiling in ``limits``."""

    def __init__(self, stages):
        super().__init__(stages)
        self.cpu = dict.fromkeys(stages, 0.0)

    @contextmanager
    def __call__(self, stage: str):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.s[stage] += time.perf_counter() - t0
            self.cpu[stage] += time.process_time() - c0


class StageTimers:
    """Adds up the seconds each stage of the optimized pipeline takes: wraps a predictor's stage
    methods on the instance (the class is untouched) and, for the temporal model forwards,
    ``affaccel.inference.temporal.run_windows`` (the function the whole-array path calls; put
    back on exit). CUDA work is synchronised at the end of each call so the time lands in the
    stage that launched it."""

    def __init__(self, pred, device):
        import torch

        self.pred = pred
        self.clock = CpuStageClock((*STAGES, "windows_total"))
        self.s = self.clock.s
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self._names = []
        self._run_windows = None

    def _timed(self, fn, stage):
        def timed(*a, **k):
            with self.clock(stage):
                out = fn(*a, **k)
                self.sync()
            return out

        return timed

    def _wrap(self, attr, stage):
        setattr(self.pred, attr, self._timed(getattr(self.pred, attr), stage))
        self._names.append(attr)

    def __enter__(self):
        import affaccel.inference.temporal as temporal
        import affaccel.video.decode as decode

        self._iter_video = decode.iter_video
        decode.iter_video = self._timed_decoder(self._iter_video)
        self._wrap("_crop", "faces")
        self._wrap("encode", "encoder")
        self._wrap("_temporal", "windows_total")
        self._run_windows = temporal.run_windows
        temporal.run_windows = self._timed(self._run_windows, "temporal")
        det = self.pred.detector if self.pred._detector is not None else None
        if det is not None:
            self._det = det
            clock = self.clock

            class TimedDetector:
                def detect(self, frames):
                    with clock("faces"):
                        return det.detect(frames)

                __call__ = detect

            self.pred._detector = TimedDetector()
        return self

    def __exit__(self, *exc):
        import affaccel.inference.temporal as temporal
        import affaccel.video.decode as decode

        decode.iter_video = self._iter_video
        for a in self._names:
            delattr(self.pred, a)           # back to the class's methods
        temporal.run_windows = self._run_windows
        if getattr(self, "_det", None) is not None:
            self.pred._detector = self._det
        # windows + averaging = the whole-array temporal step minus the model forward
        self.s["averaging"] = max(0.0, self.s.pop("windows_total") - self.s["temporal"])
        cpu = self.clock.cpu
        cpu["averaging"] = max(0.0, cpu.pop("windows_total") - cpu["temporal"])
        self.s["cpu"] = dict(cpu)

    def _timed_decoder(self, iter_video):
        clock = self.clock

        def timed(*a, **k):
            it = iter_video(*a, **k)
            while True:
                with clock("decode"):
                    item = next(it, None)
                if item is None:
                    return
                yield item

        return timed


# --------------------------------------------------------------------------------------------
# the two pipelines


def predictions_from_table(table, tasks) -> dict:
    from affaccel.tasks import TASKS

    return {t: table[list(TASKS[t].columns)].to_numpy(np.float64) for t in tasks}


def run_optimized(pred, jobs, batch: int, overlap: bool):
    """All jobs through ``AffectPredictor.predict_video(path)``, as ``python -m affaccel.predict``
    runs them: the predictor decodes, and with ``overlap`` its decode thread runs ahead
    (affaccel/inference/overlap.py; depth 0 = decoding in this thread). Returns (predictions
    per job, the decode thread's idle-time stats)."""
    stats = PrefetchStats()
    pred.prefetch_depth, pred.prefetch_stats = (3 if overlap else 0), stats
    preds = []
    try:
        for job in jobs:
            res = pred.predict_video(str(job.path), boxes=job.boxes, batch_size=batch)
            preds.append(predictions_from_table(res.frame, pred.tasks))
    finally:
        del pred.prefetch_depth, pred.prefetch_stats        # back to the class defaults
    return preds, {"busy_s": stats.busy_s, "blocked_s": stats.blocked_s, "wait_s": stats.wait_s}


def run_naive(models, jobs, track_factory=None, autocast_dtype=None):
    import _naive_pipeline as naive

    preds, st = [], dict.fromkeys(STAGES, 0.0)
    for job in jobs:
        track = track_factory() if track_factory is not None else None
        p, s = naive.run_video(models, job.path, boxes=job.boxes, track=track,
                               autocast_dtype=autocast_dtype)
        preds.append(p)
        for k in STAGES:
            st[k] += s[k]
    return preds, st


def naive_tracker_factory(pred):
    """Per-frame face tracking for the naive pipeline with affaccel's detector + tracker (same
    boxes as the optimized pipeline; detection is not what this benchmark compares)."""
    from affaccel.faces.tracker import FaceTracker

    def make():
        tr = FaceTracker(pred.detector, **pred.tracker_options)

        def track(frame):
            out = tr.update(frame[None])
            return out.boxes[0]

        return track

    return make


# --------------------------------------------------------------------------------------------
# environment


def versions() -> dict:
    import av
    import torch

    out = {"torch": torch.__version__, "av": av.__version__, "numpy": np.__version__,
           "python": platform.python_version()}
    for name, mod in (("triton", "triton"), ("dali", "nvidia.dali"), ("open_clip", "open_clip")):
        try:
            out[name] = __import__(mod, fromlist=["_"]).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is reported as such
            out[name] = None
    return out


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI-sized run: 'tiny' synthetic set, "
                   "1 repeat")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--model", default=None, help="open_clip model for the built bundle "
                   "(default: ViT-B-16 on GPU, affaccel-rn-tiny on CPU)")
    p.add_argument("--temporal-preset", default=None, help="temporal model preset of the built "
                   "bundle (affaccel.config TRAIN_PRESETS; default: paper on GPU, cpu on CPU)")
    p.add_argument("--bundle", default=None, help="bundle file (default: build a random-init one)")
    p.add_argument("--videos", nargs="+", default=None, help="videos (default: synthetic set)")
    p.add_argument("--boxes", nargs="+", default=None, help="box CSV per --videos entry")
    p.add_argument("--preset", default=None, help="synthetic preset (default: 'default', "
                   "'tiny' with --quick)")
    p.add_argument("--faces", choices=("boxes", "detect"), default=None,
                   help="given boxes or the built-in detector+tracker (default: boxes when "
                   "boxes are known)")
    p.add_argument("--batch-size", type=int, default=64, help="frames per batch (optimized)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, 1 quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each pipeline first")
    p.add_argument("--max-videos", type=int, default=None, help="use the first N videos only")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for both "
                   "pipelines (default: torch's default)")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--csv", default=None, help="append the row here (default "
                   "bench/results/throughput_<cpu|gpu>.csv)")
    p.add_argument("--no-csv", action="store_true", help="do not append a CSV row")
    p.add_argument("--tolerance", type=float, default=None, help="max |optimized - naive| per "
                   "prediction (default 1e-2 fp32, 5e-2 bf16)")
    p.add_argument("--no-int8", action="store_true", help="CPU: skip the int8-encoder row (the "
                   "optimized pipeline with predict --int8's encoder; never the optimized row)")
    p.add_argument("--naive-bf16", action="store_true", help="add the 'naive + bf16 autocast' row "
                   "on CPU too (default: GPU only; on CPU it only exercises the code path)")
    a = p.parse_args(argv)
    if a.repeats is None:
        a.repeats = 1 if a.quick else 3
    if a.repeats < 1 or a.batch_size < 1 or a.warmup < 0:
        raise SystemExit("--repeats and --batch-size must be >= 1, --warmup >= 0")
    if a.max_videos is not None and a.max_videos < 1:
        raise SystemExit("--max-videos must be >= 1")
    if a.threads is not None and a.threads < 1:
        raise SystemExit("--threads must be >= 1")
    return a


ORDER = ("optimized", "naive", "serial")
# extra configurations: "int8" (CPU: the optimized pipeline with the int8 encoder), "naive_bf16"
# (GPU, or --naive-bf16: the naive pipeline under bf16 autocast, what precision alone buys)
EXTRA = ("int8", "naive_bf16")


@dataclass
class Setup:
    """What every timed run shares: arguments, device, videos, the bundle and both pipelines."""
    a: argparse.Namespace
    device: Any
    model: str
    tpreset: str
    jobs: list[Job]
    faces: str
    bundle: Path
    pred: Any
    naive_models: Any
    track_factory: Any
    decode_device: str
    order: tuple = ORDER
    int8_pred: Any = None

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def choose_jobs(a) -> tuple[list[Job], str]:
    """The videos (given or synthetic) and the face source: (jobs, "boxes" | "detect")."""
    if a.videos:
        jobs = user_jobs(a.videos, a.boxes)
    else:
        jobs = synthetic_jobs(a.preset or ("tiny" if a.quick else "default"))
    if a.max_videos:
        jobs = jobs[:a.max_videos]
    faces = a.faces or ("boxes" if all(j.boxes is not None for j in jobs) else "detect")
    if faces == "boxes" and any(j.boxes is None for j in jobs):
        raise ValueError("--faces boxes needs --boxes for every video")
    if faces == "detect":
        jobs = [Job(j.path, None) for j in jobs]
    return jobs, faces


def make_setup(a, tmp_dir: Path) -> Setup:
    """Resolves the device, sets torch's threads, builds (or reads) the bundle, loads both
    pipelines from it."""
    import torch

    from affaccel.device import resolve_device
    from affaccel.inference.predictor import AffectPredictor

    import _naive_pipeline as naive

    device = resolve_device(a.device)
    on_gpu = device.type == "cuda"
    model = a.model or ("ViT-B-16" if on_gpu else "affaccel-rn-tiny")
    tpreset = a.temporal_preset or ("paper" if on_gpu else "cpu")
    jobs, faces = choose_jobs(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    bundle = Path(a.bundle) if a.bundle else build_bundle(tmp_dir / "bundle.pt", model, tpreset)
    # uniform overlap averaging in both pipelines (the naive one implements only that); with
    # given boxes the GPU pipeline decodes on the GPU (NVDEC), the detector needs CPU frames
    opts = dict(device=str(device), weighting="uniform",
                decode_backend="auto" if faces == "boxes" else "pyav")
    pred = AffectPredictor.from_bundle(bundle, **opts)
    order, int8_pred = ORDER, None
    if not on_gpu and not a.no_int8:
        from affaccel.nn.quantize import quantize_encoder

        int8_pred = AffectPredictor.from_bundle(bundle, **opts)
        int8_pred.encoder = quantize_encoder(int8_pred.encoder)
        order = (*order, "int8")
    if on_gpu or a.naive_bf16:
        order = (*order, "naive_bf16")
    return Setup(a=a, device=device, model=model, tpreset=tpreset, jobs=jobs, faces=faces,
                 bundle=bundle, pred=pred, naive_models=naive.NaiveModels(bundle, device),
                 track_factory=naive_tracker_factory(pred) if faces == "detect" else None,
                 decode_device=pred.decoder(jobs[0].path)[1], order=order, int8_pred=int8_pred)


def run_once(su: Setup, name: str, mem: dict):
    """One run of configuration ``name`` (ORDER), timed inside the peak-memory sampler:
    (predictions, wall seconds, stage seconds or None, decode-overlap stats or None).
    Raises ``mem[pipeline]`` to this run's peak memory (MiB)."""
    import torch

    if su.on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(su.device)
    stages = ov = None
    with PeakRSS() as rss:
        with Stopwatch() as sw:
            if name == "serial":
                with StageTimers(su.pred, su.device) as tm:
                    p, _ = run_optimized(su.pred, su.jobs, su.a.batch_size, False)
                stages = tm.s
            elif name in ("optimized", "int8"):
                p, ov = run_optimized(su.pred if name == "optimized" else su.int8_pred, su.jobs,
                                      su.a.batch_size, True)
            else:
                p, stages = run_naive(su.naive_models, su.jobs, su.track_factory,
                                      torch.bfloat16 if name == "naive_bf16" else None)
    key = "naive" if name.startswith("naive") else "optimized"
    peak = torch.cuda.max_memory_allocated(su.device) if su.on_gpu else rss.peak
    mem[key] = max(mem[key], peak / 2 ** 20)
    return p, sw.wall, stages, ov, sw.cpu


def measure(su: Setup) -> dict:
    """``--warmup`` untimed runs of each pipeline, then ``--repeats`` rounds running every
    configuration once in rotating order (load noise on a shared machine hits all of them).
    Returns the seconds of every run per configuration, the stage seconds (serial optimized
    run, naive run), the decode-overlap stats, peak memory and the last round's predictions."""
    a = su.a
    m = {"seconds": {k: [] for k in su.order}, "cpu_seconds": {k: [] for k in su.order},
         "stage_runs": {"optimized": [], "naive": []}, "overlap_runs": [],
         "mem": {"optimized": 0.0, "naive": 0.0}, "predictions": {}, "loadavg": {}}
    m["loadavg"]["start"] = os.getloadavg()
    print(f"warm-up ({len(su.jobs)} videos, {su.model}, {su.device}) ...", file=sys.stderr)
    for _ in range(a.warmup):
        for name in ("optimized", "naive", *(x for x in su.order if x in EXTRA)):
            run_once(su, name, m["mem"])
    for r in range(a.repeats):
        for name in rotated(su.order, r):
            p, secs, stages, ov, cpu = run_once(su, name, m["mem"])
            m["seconds"][name].append(secs)
            m["cpu_seconds"][name].append(cpu)
            if name == "serial":
                m["stage_runs"]["optimized"].append(stages)
            elif name == "naive":
                m["stage_runs"]["naive"].append(stages)
            elif name == "optimized":
                m["overlap_runs"].append({**ov, "wall_s": secs})
            if name != "serial":
                m["predictions"][name] = p
        print(f"round {r + 1}/{a.repeats}: " + ", ".join(
            f"{k} {m['seconds'][k][-1]:.2f} s" for k in su.order), file=sys.stderr)
    m["loadavg"]["end"] = os.getloadavg()
    return m


def count_frames(preds: dict) -> int:
    """Frames both pipelines predicted (the same count, or RuntimeError)."""
    n_frames = sum(len(next(iter(p.values()))) for p in preds["optimized"])
    n_naive = sum(len(next(iter(p.values()))) for p in preds["naive"])
    if n_frames != n_naive:
        raise RuntimeError(f"the pipelines decoded different frame counts: {n_frames} vs {n_naive}")
    return n_frames


def parity(preds: dict, tasks, tol: float) -> dict:
    """Apples to apples: the same per-frame predictions (NaN rows = no face, in both)."""
    per_task = {}
    for t in tasks:
        o = np.concatenate([p[t] for p in preds["optimized"]])
        nv = np.concatenate([p[t] for p in preds["naive"]])
        same_nan = bool(np.array_equal(np.isnan(o), np.isnan(nv)))
        diff = np.abs(o - nv)
        per_task[t] = {"max_abs": float(np.nanmax(diff)) if np.isfinite(diff).any() else 0.0,
                       "same_face_rows": same_nan,
                       "frames_with_face": int((~np.isnan(o[:, 0])).sum())}
    worst = max(v["max_abs"] for v in per_task.values())
    ok = worst <= tol and all(v["same_face_rows"] for v in per_task.values())
    return {"tolerance": tol, "max_abs": worst, "ok": ok, "tasks": per_task}


def stage_fps(stage_runs: list[dict], n_frames: int) -> dict:
    """Median seconds per stage over the runs, and frames / those seconds."""
    out = {}
    for s in STAGES:
        secs = median([x[s] for x in stage_runs])
        out[s] = {"seconds": secs, "fps": n_frames / secs if secs > 0 else float("inf")}
    return out


def overlap_summary(overlap_runs: list[dict], fps: dict) -> dict:
    ov = {k: median([o[k] for o in overlap_runs]) for k in ("busy_s", "blocked_s", "wait_s",
                                                             "wall_s")}
    return {
        "decode_busy_s": ov["busy_s"],
        # idle time of each side of the decode | rest-of-pipeline overlap, share of wall time
        "decode_idle_frac": ov["blocked_s"] / ov["wall_s"],
        "pipeline_wait_on_decode_frac": ov["wait_s"] / ov["wall_s"],
        "serial_fps": fps["serial"],
        "overlapped_fps": fps["optimized"],
        "gain": fps["optimized"] / fps["serial"],
    }


def int8_feature_cosine(su: Setup) -> dict:
    """Per-frame cosine between the fp32 and the int8 encoder's features on the first batch of
    real face crops of the first video (its boxes; the centre square where none are given)."""
    import torch

    from affaccel.video.decode import iter_video

    job = su.jobs[0]
    frames = next(iter(iter_video(job.path, backend="pyav", batch_size=su.a.batch_size))).frames
    n, h, w = frames.shape[:3]
    if job.boxes is not None:
        boxes = np.asarray(job.boxes[:n], np.float32)
    else:
        side = min(h, w) / 2
        boxes = np.tile(np.array([[(w - side) / 2, (h - side) / 2, side, side]], np.float32), (n, 1))
    crops, valid = su.pred._crop(frames, torch.as_tensor(boxes))
    crops = crops[torch.as_tensor(np.asarray(valid, bool))]
    a, b = su.pred.encode(crops), su.int8_pred.encode(crops)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {"frames": int(len(cos)), "min": float(cos.min()), "median": float(cos.median()),
            "max_abs_feature_diff": float((a - b).abs().max())}


def max_abs_between(a: list, b: list, tasks) -> float:
    """Largest |a - b| over the per-frame predictions of two runs (NaN rows ignored)."""
    worst = 0.0
    for t in tasks:
        d = np.abs(np.concatenate([x[t] for x in a]) - np.concatenate([x[t] for x in b]))
        if np.isfinite(d).any():
            worst = max(worst, float(np.nanmax(d)))
    return worst


def limits(su: Setup, m: dict, fps: dict, stages: dict) -> dict:
    """What bounds the end-to-end figure: the encoder alone and the decoder alone (serial run's
    stage figures, each with the whole machine), the pipeline efficiency (end to end over the
    encoder alone), and how busy the cores were during the overlapped run (process CPU seconds
    over wall seconds x cores: 1.0 = every core busy the whole time)."""
    opt = stages["optimized"]
    enc, dec = opt["encoder"]["fps"], opt["decode"]["fps"]
    serial_s = sum(opt[s]["seconds"] for s in STAGES)
    n = count_frames(m["predictions"])
    cores = os.cpu_count() or 1
    cpu = median(m["cpu_seconds"]["optimized"])
    wall = median(m["seconds"]["optimized"])
    # core-seconds each stage needs (serial run, median over rounds); with every core busy the
    # pipeline cannot beat cores x frames / their sum, whatever overlaps with what
    stage_cpu = {s: median([r["cpu"][s] for r in m["stage_runs"]["optimized"]]) for s in STAGES}
    total_cpu = sum(stage_cpu.values())
    ceiling = cores * n / total_cpu if total_cpu > 0 else None
    # all of the serial run's CPU, also what no stage timer covers (the predictor's own work:
    # scene-cut histograms, tables, ...): the ceiling of the pipeline as it is
    serial_cpu = median(m["cpu_seconds"]["serial"])
    untimed_s = median(m["seconds"]["serial"]) - serial_s
    return {"encoder_alone_fps": enc, "decode_alone_fps": dec,
            "pipeline_efficiency": fps["optimized"] / enc,
            "stage_sum_fps": n / serial_s if serial_s > 0 else None,
            "stage_cpu_ms_per_frame": {s: 1e3 * v / n for s, v in stage_cpu.items()},
            "cpu_bound_fps": ceiling,
            "efficiency_ceiling": ceiling / enc if ceiling else None,
            "untimed_ms_per_frame": 1e3 * max(0.0, untimed_s) / n,
            "serial_cpu_ms_per_frame": 1e3 * serial_cpu / n,
            "cpu_bound_fps_all": cores * n / serial_cpu if serial_cpu > 0 else None,
            "speedup_ceiling": (cores * n / serial_cpu) / fps["naive"] if serial_cpu > 0 else None,
            "core_utilisation": cpu / (wall * cores), "cpu_seconds": cpu, "cores": cores}


def extra_rows(su: Setup, m: dict, fps: dict) -> dict:
    """The int8-encoder row (CPU) and the naive + bf16 autocast row (GPU / --naive-bf16)."""
    out = {}
    pr = m["predictions"]
    if "int8" in fps:
        out["int8"] = {"fps": fps["int8"], "vs_optimized": fps["int8"] / fps["optimized"],
                       "vs_naive": fps["int8"] / fps["naive"],
                       "max_abs_vs_optimized": max_abs_between(pr["int8"], pr["optimized"], su.pred.tasks),
                       "quantized_layers": su.int8_pred.encoder.quantized_layers,
                       "feature_cosine": int8_feature_cosine(su)}
    if "naive_bf16" in fps:
        out["naive_bf16"] = {"fps": fps["naive_bf16"], "vs_naive": fps["naive_bf16"] / fps["naive"],
                             "optimized_vs_it": fps["optimized"] / fps["naive_bf16"],
                             "max_abs_vs_naive": max_abs_between(pr["naive_bf16"], pr["naive"], su.pred.tasks)}
    return out


def roofline(su: Setup, stages: dict, gflop: float) -> dict | None:
    """GPU only: the encoder's frames/s x GFLOP against a measured bf16 matmul peak."""
    if not su.on_gpu:
        return None
    peak = bf16_matmul_peak_tflops(su.device)
    enc_fps = stages["optimized"]["encoder"]["fps"]
    return {"gflop_per_frame": gflop, "vit_b16_reference_gflop": VIT_B16_GFLOP,
            "bf16_matmul_peak_tflops": peak, "encoder_fps": enc_fps,
            "fraction": roofline_fraction(enc_fps, gflop, peak)}


def build_report(su: Setup, m: dict) -> dict:
    """The report of one benchmark run from its measurements (without the predictions)."""
    import torch

    import _naive_pipeline as naive

    a = su.a
    n_frames = count_frames(m["predictions"])
    par = parity(m["predictions"], su.pred.tasks, a.tolerance or (5e-2 if su.on_gpu else 1e-2))
    med = {k: median(v) for k, v in m["seconds"].items()}
    fps = {k: n_frames / med[k] for k in m["seconds"]}
    stages = {k: stage_fps(m["stage_runs"][k], n_frames) for k in ("optimized", "naive")}
    gflop = encoder_gflop(su.pred.encoder)
    return {
        "optimized_fps": fps["optimized"],
        "naive_fps": fps["naive"],
        "speedup": fps["optimized"] / fps["naive"],
        "optimized_serial_fps": fps["serial"],
        "seconds": {k: {"median": med[k], "all": m["seconds"][k]} for k in m["seconds"]},
        "stages": stages,
        "stage_speedup": {s: stages["optimized"][s]["fps"] / stages["naive"][s]["fps"]
                          for s in STAGES if stages["naive"][s]["seconds"] > 0
                          and stages["optimized"][s]["seconds"] > 0},
        "overlap": overlap_summary(m["overlap_runs"], fps),
        "limits": limits(su, m, fps, stages),
        "loadavg": m["loadavg"],
        "cpu_seconds": {k: median(v) for k, v in m["cpu_seconds"].items()},
        **extra_rows(su, m, fps),
        "peak_memory_mb": {**m["mem"], "kind": "torch.cuda.max_memory_allocated" if su.on_gpu
                           else "process RSS (sampled)"},
        "encoder_gflop_per_frame": gflop,
        "roofline": roofline(su, stages, gflop),
        "parity": par,
        "frames": n_frames,
        "videos": [str(j.path) for j in su.jobs],
        "faces": su.faces,
        "model": su.model,
        "temporal_preset": su.tpreset if not a.bundle else None,
        "bundle": str(su.bundle) if a.bundle else "built (random init)",
        "image_size": su.pred.encoder.image_size,
        "batch_size": a.batch_size,
        "repeats": a.repeats,
        "device": str(su.device),
        "decode_device": su.decode_device,
        "machine": (torch.cuda.get_device_name(su.device) if su.on_gpu else cpu_model()),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "commit": git_commit("affaccel", "bench"),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "naive_pipeline": json.loads(naive.describe()),
    }


def run_benchmark(argv=None) -> dict:
    """Run the benchmark; returns the report (also holding the last repeat's predictions of
    both pipelines under "predictions", which the JSON leaves out)."""
    a = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="affaccel-throughput-") as tmp:
        su = make_setup(a, Path(tmp))
        m = measure(su)
        report = build_report(su, m)
    report["predictions"] = m["predictions"]
    return report


def write_outputs(report: dict, json_path, csv_path) -> None:
    from affaccel.io_utils import atomic_write_text

    public = {k: v for k, v in report.items() if k != "predictions"}
    if json_path:
        atomic_write_text(Path(json_path), json.dumps(public, indent=1) + "\n")
    if csv_path:
        st = report["stages"]
        row = {
            "date": report["date"], "commit": report["commit"], "machine": report["machine"],
            "device": report["device"], "cores": report["cores"],
            "torch_threads": report["torch_threads"],
            "torch": report["versions"]["torch"], "triton": report["versions"]["triton"],
            "dali": report["versions"]["dali"], "av": report["versions"]["av"],
            "model": report["model"], "image_size": report["image_size"],
            "faces": report["faces"], "videos": len(report["videos"]),
            "frames": report["frames"], "repeats": report["repeats"],
            "optimized_fps": f"{report['optimized_fps']:.2f}",
            "optimized_serial_fps": f"{report['optimized_serial_fps']:.2f}",
            "naive_fps": f"{report['naive_fps']:.2f}", "speedup": f"{report['speedup']:.3f}",
            "overlap_gain": f"{report['overlap']['gain']:.3f}",
            **{f"opt_{s}_fps": f"{st['optimized'][s]['fps']:.1f}" for s in STAGES},
            **{f"naive_{s}_fps": f"{st['naive'][s]['fps']:.1f}" for s in STAGES},
            "encoder_roofline": (f"{report['roofline']['fraction']:.3f}"
                                 if report["roofline"] else ""),
            "opt_peak_mem_mb": f"{report['peak_memory_mb']['optimized']:.0f}",
            "naive_peak_mem_mb": f"{report['peak_memory_mb']['naive']:.0f}",
            "parity_max_abs": f"{report['parity']['max_abs']:.2e}",
            **csv_extra(report),
        }
        append_csv_row(Path(csv_path), row)


def csv_extra(report: dict) -> dict:
    lim, i8, nb = report["limits"], report.get("int8"), report.get("naive_bf16")
    return {"loadavg_1min_start": f"{report['loadavg']['start'][0]:.2f}",
            "loadavg_1min_end": f"{report['loadavg']['end'][0]:.2f}",
            "encoder_alone_fps": f"{lim['encoder_alone_fps']:.1f}",
            "decode_alone_fps": f"{lim['decode_alone_fps']:.1f}",
            "pipeline_efficiency": f"{lim['pipeline_efficiency']:.3f}",
            "core_utilisation": f"{lim['core_utilisation']:.3f}",
            "int8_fps": f"{i8['fps']:.2f}" if i8 else "",
            "int8_max_abs": f"{i8['max_abs_vs_optimized']:.2e}" if i8 else "",
            "int8_feature_cosine_min": f"{i8['feature_cosine']['min']:.6f}" if i8 else "",
            "naive_bf16_fps": f"{nb['fps']:.2f}" if nb else "",
            "cpu_bound_fps": f"{lim['cpu_bound_fps']:.1f}",
            "efficiency_ceiling": f"{lim['efficiency_ceiling']:.3f}",
            "cpu_bound_fps_all": f"{lim['cpu_bound_fps_all']:.1f}",
            "speedup_ceiling": f"{lim['speedup_ceiling']:.3f}"}


def append_csv_row(path: Path, row: dict) -> None:
    """Append ``row``; a file written with an older column list is rewritten with the current
    one first (old rows keep their values, new columns empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, header = [], None
    if path.is_file() and path.stat().st_size > 0:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames, list(reader)
    if header != CSV_FIELDS:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(row)


def print_table(r: dict) -> None:
    v = r["versions"]
    print(f"\n{r['machine']} ({r['device']}, {r['cores']} cores, {r['torch_threads']} torch "
          f"threads) | torch {v['torch']}, triton {v['triton']}, DALI {v['dali']}, PyAV {v['av']}"
          f" | commit {r['commit']} | {r['date']}")
    print(f"{r['model']} at {r['image_size']} px ({r['encoder_gflop_per_frame']:.2f} GFLOP/frame)"
          f", {len(r['videos'])} videos, {r['frames']} frames, faces: {r['faces']}, median of "
          f"{r['repeats']} (warm-up excluded) | load average (1 min) {r['loadavg']['start'][0]:.2f} "
          f"at start, {r['loadavg']['end'][0]:.2f} at end")
    print(f"parity: max |optimized - naive| = {r['parity']['max_abs']:.2e} "
          f"(tolerance {r['parity']['tolerance']:.0e}) -> {'OK' if r['parity']['ok'] else 'FAIL'}")
    ov = r["overlap"]
    print(f"decode thread overlap: {ov['overlapped_fps']:.1f} vs serial {ov['serial_fps']:.1f} "
          f"frames/s (x{ov['gain']:.2f}); decoder idle {100 * ov['decode_idle_frac']:.0f}% , "
          f"pipeline waiting on decode {100 * ov['pipeline_wait_on_decode_frac']:.0f}% of wall")
    if r["roofline"]:
        rf = r["roofline"]
        print(f"encoder: {rf['encoder_fps']:.0f} frames/s x {rf['gflop_per_frame']:.1f} GFLOP = "
              f"{100 * rf['fraction']:.1f}% of the measured bf16 matmul peak "
              f"({rf['bf16_matmul_peak_tflops']:.0f} TFLOP/s)")
    mem = r["peak_memory_mb"]
    print(f"peak memory ({mem['kind']}): optimized {mem['optimized']:.0f} MiB, "
          f"naive {mem['naive']:.0f} MiB\n")
    st = r["stages"]
    print(f"{'stage':<24} {'optimized f/s':>14} {'naive f/s':>12} {'speedup':>9}")
    for s in STAGES:
        o, n = st["optimized"][s]["fps"], st["naive"][s]["fps"]
        print(f"{s:<24} {o:>14.1f} {n:>12.1f} {o / n:>8.2f}x")
    print(f"{'end to end (serial)':<24} {r['optimized_serial_fps']:>14.1f} {r['naive_fps']:>12.1f}"
          f" {r['optimized_serial_fps'] / r['naive_fps']:>8.2f}x")
    print(f"{'END TO END':<24} {r['optimized_fps']:>14.1f} {r['naive_fps']:>12.1f} "
          f"{r['speedup']:>8.2f}x")
    print_extra_rows(r)


def print_extra_rows(r: dict) -> None:
    if r.get("naive_bf16"):
        nb = r["naive_bf16"]
        print(f"{'naive + bf16 autocast':<24} {r['optimized_fps']:>14.1f} {nb['fps']:>12.1f} "
              f"{nb['optimized_vs_it']:>8.2f}x   (max |bf16 - fp32 naive| {nb['max_abs_vs_naive']:.1e})")
    if r.get("int8"):
        i8 = r["int8"]
        print(f"{'int8 encoder (opt-in)':<24} {i8['fps']:>14.1f} {r['naive_fps']:>12.1f} "
              f"{i8['vs_naive']:>8.2f}x   ({i8['vs_optimized']:.2f}x fp32 optimized; "
              f"{i8['quantized_layers']} Linear layers; feature cosine min "
              f"{i8['feature_cosine']['min']:.5f}; max |int8 - fp32| {i8['max_abs_vs_optimized']:.1e})")
    lim = r["limits"]
    print(f"\nlimits: encoder alone {lim['encoder_alone_fps']:.1f} frames/s, decode alone "
          f"{lim['decode_alone_fps']:.1f} frames/s, all stages in series {lim['stage_sum_fps']:.1f} "
          f"frames/s; pipeline efficiency (end to end / encoder alone) "
          f"{lim['pipeline_efficiency']:.2f}; cores busy {100 * lim['core_utilisation']:.0f}% "
          f"of {lim['cores']} during the overlapped run")
    cpu = lim["stage_cpu_ms_per_frame"]
    print("CPU ms per frame (serial run, all threads): " + ", ".join(
        f"{s} {cpu[s]:.2f}" for s in STAGES) + f"; CPU-bound ceiling {lim['cores']} cores / their "
        f"sum = {lim['cpu_bound_fps']:.1f} frames/s = {lim['efficiency_ceiling']:.2f} x encoder alone")
    print(f"serial run outside the stage timers {lim['untimed_ms_per_frame']:.2f} ms/frame; all its CPU "
          f"{lim['serial_cpu_ms_per_frame']:.2f} ms/frame -> ceiling {lim['cpu_bound_fps_all']:.1f} frames/s "
          f"= {lim['speedup_ceiling']:.2f} x naive, {lim['cpu_bound_fps_all'] / lim['encoder_alone_fps']:.2f} x "
          "encoder alone")


def main(argv=None) -> int:
    a = parse_args(argv)
    report = run_benchmark(argv)
    dev = "gpu" if report["device"].startswith("cuda") else "cpu"
    csv_path = None if a.no_csv else (a.csv or BENCH / "results" / f"throughput_{dev}.csv")
    write_outputs(report, a.json, csv_path)
    print_table(report)
    return 0 if report["parity"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
