"""Benchmark of the video front end (affaccel.video): decoding, frame batches, face crops.

Side by side in one run, each the median of ``--repeats`` timed runs after one warm-up:
  decode  VP9 480x360 clip (made here with PyAV): PyAV vs DALI in one run vs DALI in 64-frame
          chunks (what bounded memory costs), frames/s including RGB conversion;
  frames  FrameLoader over 112x112 JPEGs resized to 224: DALI vs the PIL reference, images/s;
  crop    crop_faces of 480x360 frames to 224: DALI vs the torch reference, crops/s.
``--device cuda`` runs the GPU paths (DALI mixed) against the same CPU baselines.
A table is printed last; rows are appended to bench/results/video_<device>.csv.

    python bench/bench_video.py --quick      # seconds
    python bench/bench_video.py              # 300 frames, 512 images
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from affaccel.io_utils import atomic_write_text  # noqa: E402

from _machine import cpu_model, git_commit, wall_clock  # noqa: E402

FIELDS = ["date", "commit", "cpu", "gpu", "cores", "torch", "dali", "av", "stage", "impl",
          "device", "items", "shape", "median_s", "min_s", "repeats", "items_per_s",
          "vs_baseline", "baseline"]


def make_clip(path: Path, n: int, w: int = 480, h: int = 360) -> None:
    """A VP9 clip with moving texture and noise (so the codec has real work)."""
    import av

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libvpx-vp9", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"deadline": "realtime", "cpu-used": "8", "g": "50"}  # key frame every 2 s
        for i in range(n):
            img = np.stack([128 + 100 * np.sin(xx / 17 + i / 5), 128 + 100 * np.cos(yy / 11 - i / 7),
                            128 + 90 * np.sin((xx + yy) / 23 + i / 3)], -1)
            img += rng.normal(0, 8, img.shape)
            f = av.VideoFrame.from_ndarray(img.clip(0, 255).astype(np.uint8), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_jpegs(folder: Path, n: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(1)
    paths = []
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float32)
    for i in range(n):
        img = np.stack([128 + 90 * np.sin(xx / (5 + i % 7)), 128 + 90 * np.cos(yy / (4 + i % 5)),
                        128 + 60 * np.sin((xx - yy) / 9)], -1) + rng.normal(0, 10, (112, 112, 3))
        p = folder / f"{i + 1:05d}.jpg"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(str(p))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=300, help="frames of the VP9 clip")
    ap.add_argument("--images", type=int, default=512, help="JPEGs for FrameLoader")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="DALI CPU threads")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--no-csv", action="store_true", help="do not append to the CSV")
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.images, args.repeats = 60, 128, 3

    import av
    import nvidia.dali
    import torch

    from affaccel.video import crop as C
    from affaccel.video import decode as D
    from affaccel.video import frames as F

    dev = args.device
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    rows = []

    def add(stage, impl, device, items, shape, samples, baseline=None):
        med, mn = samples.median, samples.min
        rows.append(dict(stage=stage, impl=impl, device=device, items=items, shape=shape,
                         median_s=med, min_s=mn, repeats=args.repeats, items_per_s=items / med,
                         baseline=baseline or "", vs_baseline=""))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tmp / "clip.webm"
        make_clip(clip, args.frames)
        n = args.frames

        def decode(backend, device, chunk=None):
            def run():
                k = 0
                for b in D.iter_video(clip, backend=backend, device=device,
                                      batch_size=args.batch, max_chunk_bytes=chunk):
                    k += len(b)
                sync()
                assert k == n, (k, n)
            return run

        add("decode", "pyav", "cpu", n, "480x360 vp9", wall_clock(decode("pyav", "cpu"), args.repeats))
        whole = n * 480 * 360 * 3
        add("decode", "dali_whole", dev, n, "480x360 vp9",
            wall_clock(decode("dali", dev, whole), args.repeats), "pyav")
        add("decode", "dali_chunk64", dev, n, "480x360 vp9",
            wall_clock(decode("dali", dev, 64 * 480 * 360 * 3), args.repeats), "pyav")

        jdir = tmp / "jpg"
        jdir.mkdir()
        paths = make_jpegs(jdir, args.images)

        def loader(backend, device):
            ld = F.FrameLoader(paths, batch_size=args.batch, image_size=224, device=device,
                               backend=backend, num_threads=args.threads)

            def run():
                k = sum(b["images"].shape[0] for b in ld)
                sync()
                assert k == len(paths)
            return run

        add("frames", "reference", "cpu", len(paths), "112->224",
            wall_clock(loader("reference", "cpu"), args.repeats))
        add("frames", "dali", dev, len(paths), "112->224",
            wall_clock(loader("dali", dev), args.repeats), "reference")

        frames = np.stack([np.asarray(b.frames) for b in D.iter_video(clip, backend="pyav",
                                                                        batch_size=args.batch)][:1])[0]
        rng = np.random.default_rng(2)
        B = frames.shape[0]
        boxes = np.concatenate([rng.uniform(50, 250, (B, 2)), rng.uniform(90, 160, (B, 2))], 1)
        tf = torch.from_numpy(frames).to(dev)
        add("crop", "reference", "cpu", B, "480x360->224",
            wall_clock(lambda: C.crop_faces_ref(frames, boxes, 224), args.repeats))
        add("crop", "dali", dev, B, "480x360->224",
            wall_clock(lambda: (C.crop_faces_dali(tf, boxes, 224, device=dev), sync()),
                       args.repeats), "reference")

    base = {(r["stage"], r["impl"]): r for r in rows}
    for r in rows:
        if r["baseline"]:
            r["vs_baseline"] = base[(r["stage"], r["baseline"])]["median_s"] / r["median_s"]

    gpu = torch.cuda.get_device_name() if dev.startswith("cuda") else ""
    meta = dict(date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                commit=git_commit("affaccel/video"), cpu=cpu_model(), gpu=gpu,
                cores=len(os.sched_getaffinity(0)),
                torch=torch.__version__, dali=nvidia.dali.__version__, av=av.__version__)
    print_table(rows, meta)
    if not args.no_csv:
        append_csv(ROOT / "bench" / "results" / f"video_{'gpu' if gpu else 'cpu'}.csv", rows, meta)
    return 0


def print_table(rows: list[dict], meta: dict) -> None:
    print(f"\n{meta['cpu']} ({meta['cores']} cores) {meta['gpu']}  torch {meta['torch']}  "
          f"DALI {meta['dali']}  PyAV {meta['av']}  commit {meta['commit']}")
    print(f"{'stage':7} {'impl':13} {'device':6} {'items':>6} {'shape':14} {'median s':>9} "
          f"{'items/s':>9} {'vs base':>8}")
    for r in rows:
        vs = f"{r['vs_baseline']:.2f}x" if r["vs_baseline"] != "" else ""
        print(f"{r['stage']:7} {r['impl']:13} {r['device']:6} {r['items']:6d} {r['shape']:14} "
              f"{r['median_s']:9.4f} {r['items_per_s']:9.1f} {vs:>8}")


def append_csv(path: Path, rows: list[dict], meta: dict) -> None:
    old = path.read_text() if path.exists() else ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    if not old:
        w.writeheader()
    for r in rows:
        w.writerow({**meta, **r})
    atomic_write_text(path, old + buf.getvalue())
    print(f"appended {len(rows)} rows to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    raise SystemExit(main())
