"""Case 5: every command line checks its arguments before any heavy work: exit 2, one line
naming the argument, no traceback. Bundle problems name the file and the key."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from predict_support import make_bundle

CUDA = torch.cuda.is_available()


def _cli(tmp_path, *args, timeout=60):
    env = dict(os.environ, AFFACCEL_HOME=str(tmp_path / "home"))
    try:
        return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                              env=env, timeout=timeout)
    except subprocess.TimeoutExpired:   # it went on to real work: the check came too late
        pytest.fail(f"{' '.join(args)}: still running after {timeout} s (no early argument check)")


def _one_line_error(proc, flag):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-1500:])
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and flag in err[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, flag", [
    (["--epochs", "0"], "--epochs"),
    (["--lr", "nan"], "--lr"),
    (["--lr=-1e-4"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--folds", "1"], "--folds"),
    (["--data-root", "/nonexistent/data"], "--data-root"),
    (["--resume", "--run-dir", "EMPTY"], "--resume"),
] + ([] if CUDA else [(["--device", "cuda"], "--device")]))
def test_train_arguments(tmp_path, args, flag):
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    (tmp_path / "empty").mkdir()
    _one_line_error(_cli(tmp_path, "affaccel.train", *args), flag)


@pytest.mark.parametrize("cmd, args, flag", [
    ("affaccel.extract", ["--batch-size", "0"], "--batch-size"),
    ("affaccel.extract", ["--checkpoint", "/nonexistent/best.pt"], "--checkpoint"),
    ("affaccel.extract", ["--splits", "training"], "--splits"),
    ("affaccel.finetune", ["--epochs", "0"], "--epochs"),
    ("affaccel.finetune", ["--lr", "inf"], "--lr"),
    ("affaccel.ablate", ["--epochs", "0"], "--epochs"),
])
def test_stage_command_arguments(tmp_path, cmd, args, flag):
    _one_line_error(_cli(tmp_path, cmd, *args), flag)


def test_predict_out_naming_a_file(tmp_path):
    bundle = make_bundle(tmp_path / "b.pt")
    (tmp_path / "out.csv").write_text("x\n")
    video = tmp_path / "missing.mp4"     # never opened: the check comes first
    _one_line_error(_cli(tmp_path, "affaccel.predict", str(video), "--bundle", str(bundle), "--out",
                         str(tmp_path / "out.csv"), "--no-progress"), "--out")


@pytest.mark.parametrize("drop", ["window", "encoder.state_dict", "tasks.va.state_dict"])
def test_bundle_missing_a_key(tmp_path, drop):
    raw = torch.load(make_bundle(tmp_path / "b.pt", tasks=("va",)), weights_only=True)
    *parents, key = drop.split(".")
    d = raw
    for k in parents:
        d = d[k]
    del d[key]
    broken = tmp_path / "broken.pt"
    torch.save(raw, broken)
    (tmp_path / "v.mp4").write_bytes(b"")
    proc = _cli(tmp_path, "affaccel.predict", str(tmp_path / "v.mp4"), "--bundle", str(broken), "--out",
                str(tmp_path / "out"), "--no-progress", "--device", "cpu")
    _one_line_error(proc, str(broken))
    assert drop in proc.stderr and "weights_only=False" not in proc.stderr
