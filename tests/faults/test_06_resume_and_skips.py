"""Case 6: resume problems are named errors (missing last.pt with --resume, a truncated one, one
written for another task or preset); no errno traceback, no silent fresh start."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_train import tiny_cfg, toy_videos

from affaccel.stages.temporal import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    train(tiny_cfg("va", epochs=1), toy_videos(3, "va", 0), toy_videos(1, "va", 1), d, progress=False)
    return d


def test_truncated_last_pt_is_named(run_dir, tmp_path):
    import shutil

    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    raw = (d / "last.pt").read_bytes()
    (d / "last.pt").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match=r"last\.pt: unreadable checkpoint") as e:
        train(tiny_cfg("va", epochs=2), toy_videos(3, "va", 0), toy_videos(1, "va", 1), d, resume=True,
              progress=False)
    assert "weights_only=False" not in str(e.value)


def test_last_pt_of_another_task_is_named(run_dir, tmp_path):
    import shutil

    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    with pytest.raises(ValueError, match=r"last\.pt: written with task='va'.*task='au'"):
        train(tiny_cfg("au", epochs=2), toy_videos(3, "au", 0), toy_videos(1, "au", 1), d, resume=True,
              progress=False)


def test_resume_in_an_empty_run_dir_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    env = dict(os.environ, AFFACCEL_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "affaccel.train", "--resume", "--run-dir",
                           str(tmp_path / "empty")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "last.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_skipped_files_are_listed_for_the_final_table(tmp_path):
    """A bad VA file under --data-root (lenient): listed with its reason for final_metrics.json
    and the printout, and the video keeps its other tasks."""
    import shutil

    from affaccel.data.affwild2 import load_affwild2
    from affaccel.data.synthetic import ensure_synthetic
    from affaccel.stages.pipeline import skipped_items, skipped_lines

    root = tmp_path / "copy"
    shutil.copytree(ensure_synthetic("tiny", root=tmp_path / "data", progress=False), root)
    va = sorted((root / "VA_Estimation_Challenge").rglob("*.txt"))[0]
    lines = va.read_text().splitlines()
    lines[3] = "not,a,number"
    va.write_text("\n".join(lines) + "\n")
    ds = load_affwild2(root, lenient=True)
    rows = skipped_items(ds, {"vidX"})
    assert any(r.get("file") == str(va) for r in rows) and {"video": "vidX"}.items() <= rows[-1].items()
    assert str(va) in skipped_lines(rows)
    rec = ds.get(va.stem)
    assert "va" not in rec.tasks and rec.tasks
