"""torchrun sharding of extract and predict: 2 CPU processes (gloo) give the same cache and the same
tables as one process, each rank working on its own share."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from affaccel.distributed import shard_by_size

ROOT = Path(__file__).resolve().parents[1]


def test_shard_by_size_is_a_balanced_deterministic_partition():
    sizes = [120, 60, 90, 75, 100, 61, 64, 118]
    shares = [shard_by_size(sizes, 3, r) for r in range(3)]
    assert sorted(i for s in shares for i in s) == list(range(len(sizes)))   # disjoint and complete
    loads = [sum(sizes[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(sizes) // 2, loads
    assert shares == [shard_by_size(sizes, 3, r) for r in range(3)]
    assert shard_by_size(sizes, 1, 0) == list(range(len(sizes)))
    assert shard_by_size([5, 5, 5, 5], 2, 0) == [0, 2] and shard_by_size([5, 5, 5, 5], 2, 1) == [1, 3]
    with pytest.raises(ValueError):
        shard_by_size(sizes, 2, 2)


def test_merge_parts_folds_rank_entries_into_the_manifest(tmp_path):
    from affaccel.stages.features import FeatureCache

    base = FeatureCache(tmp_path, "enc")
    base.write("a", np.ones((3, 4)))
    writers = []
    for rank, vid in enumerate(["b", "c"]):
        w = FeatureCache(tmp_path, "enc")
        w.write_to_part(rank)
        w.write(vid, np.full((2, 4), rank))
        writers.append(w)
    assert FeatureCache(tmp_path, "enc").video_ids() == ["a"]       # parts are not the manifest yet
    stale = base.dir / ".x.npy.tmp"
    stale.write_bytes(b"")
    assert writers[0].remove_stale_temp_files() == [] and stale.exists()   # a part writer deletes nothing
    assert sorted(FeatureCache(tmp_path, "enc").merge_parts()) == ["b", "c"]
    again = FeatureCache(tmp_path, "enc")
    assert again.video_ids() == ["a", "b", "c"] and not list(base.dir.glob("manifest.part-*"))
    assert np.array_equal(again.load_features("c"), np.ones((2, 4)))


def _torchrun(script: Path, env: dict, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--standalone", str(script)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


_EXTRACT = """
import json, os, sys
from affaccel import distributed
import affaccel.stages.features as F
_extract = F.extract_features
def extract_features(records, *a, **k):
    out = _extract(records, *a, **k)
    rank = os.environ.get("RANK", "single")
    json.dump([r.video_id for r in records], open(os.path.join({log!r}, f"share-{{rank}}.json"), "w"))
    return out
F.extract_features = extract_features
from affaccel import extract
sys.exit(extract.main(sys.argv[1:] or {argv!r}))
"""


def _cache_state(cache_root: Path) -> tuple[dict, dict]:
    (d,) = [p for p in cache_root.iterdir() if p.is_dir()]
    manifest = json.loads((d / "manifest.json").read_text())
    assert not list(d.glob("manifest.part-*")) and not list(d.glob(".*.tmp"))
    return manifest["videos"], {p.stem: np.load(p) for p in d.glob("*.npy")}


def test_extract_two_process_gloo_matches_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AFFACCEL_HOME": str(tmp_path / "home")}
    env.pop("WORLD_SIZE", None)
    from affaccel.data.synthetic import ensure_synthetic

    os.environ["AFFACCEL_HOME"], old = env["AFFACCEL_HOME"], os.environ.get("AFFACCEL_HOME")
    try:
        root = ensure_synthetic("tiny")
    finally:
        os.environ.pop("AFFACCEL_HOME") if old is None else os.environ.__setitem__("AFFACCEL_HOME", old)
    logs = {n: tmp_path / n for n in ("one", "two")}
    for n, log in logs.items():
        log.mkdir()
        argv = ["--data-root", str(root), "--cache", str(tmp_path / f"cache-{n}"), "--device", "cpu",
                "--batch-size", "32", "--quiet", "--frames-backend", "pil"]
        (tmp_path / f"{n}.py").write_text(_EXTRACT.format(log=str(log), argv=argv))
    one = subprocess.run([sys.executable, str(tmp_path / "one.py")], capture_output=True, text=True,
                         timeout=300, env=env, cwd=ROOT)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(tmp_path / "two.py", env)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "shares: rank 0:" in two.stderr
    shares = [json.loads((logs["two"] / f"share-{r}.json").read_text()) for r in (0, 1)]
    assert shares[0] and shares[1] and not set(shares[0]) & set(shares[1])
    (everything,) = [json.loads((logs["one"] / "share-single.json").read_text())]
    assert sorted(shares[0] + shares[1]) == sorted(everything)
    entries1, feats1 = _cache_state(tmp_path / "cache-one")
    entries2, feats2 = _cache_state(tmp_path / "cache-two")
    assert sorted(entries1) == sorted(entries2) == sorted(everything) == sorted(feats2)
    for vid in entries1:
        assert {k: v for k, v in entries1[vid].items()} == entries2[vid], vid
        assert np.array_equal(feats1[vid], feats2[vid]), vid
    # a second sharded run finds everything cached and extracts nothing
    again = _torchrun(tmp_path / "two.py", env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"extracted 0 videos (0 frames), skipped {len(everything)} already cached" in again.stderr


def test_predict_two_process_gloo_matches_one_process(tmp_path):
    """Same names (a/x and b/x collide), same tables, one manifest in input order, exit 1 for the
    unreadable input whichever rank had it."""
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).parent))
    from predict_support import face_frames, make_bundle, write_video

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    vids = [write_video(tmp_path / "a" / "x.mp4", face_frames(12)),
            write_video(tmp_path / "b" / "x.mp4", face_frames(20)),
            write_video(tmp_path / "y.mp4", face_frames(16))]
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    vids.append(bad)
    bundle = make_bundle(tmp_path / "bundle.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    args = [*map(str, vids), "--bundle", str(bundle), "--no-progress", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "affaccel.predict", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert one.returncode == 1, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                          "-m", "affaccel.predict", *args, "--out", str(tmp_path / "two"), "--verbose"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert two.returncode != 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "3 of 4 videos done" in two.stdout and two.stdout.count("videos done") == 1   # rank 0 reports
    # every video ran once, on one rank (both ranks predicting everything would print these twice)
    assert two.stdout.count(": decoded with ") == 3 and two.stderr.count(f"FAILED {bad}") == 1, two.stdout
    m1 = json.loads((tmp_path / "one" / "manifest.json").read_text())["inputs"]
    m2 = json.loads((tmp_path / "two" / "manifest.json").read_text())["inputs"]
    assert not list((tmp_path / "two").glob("manifest.part-*"))
    assert [e["input"] for e in m2] == [str(v) for v in vids]

    def comparable(e):
        return {**{k: v for k, v in e.items() if k != "seconds"}, "outputs": [Path(o).name for o in e["outputs"]]}

    assert [comparable(e) for e in m1] == [comparable(e) for e in m2]
    assert [e["status"] for e in m2] == ["ok", "ok", "ok", "failed"]
    names = sorted(p.name for p in (tmp_path / "two").glob("*.csv"))
    assert names == sorted(p.name for p in (tmp_path / "one").glob("*.csv")) == ["x.csv", "x_1.csv", "y.csv"]
    for n in names:
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "one" / n), pd.read_csv(tmp_path / "two" / n))
