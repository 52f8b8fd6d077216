"""The main job's variants end to end on the tiny synthetic set: the ablation flags
(--no-tcn, --no-transformer, --no-finetune), the k-fold protocol and the ablation command."""
from __future__ import annotations

import json

import numpy as np
import pytest

TINY = ["--synthetic", "tiny", "--preset", "tiny", "--quiet"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One AFFACCEL_HOME for the module: the tiny set, the fine-tuned encoder and the features
    are made once and reused by every test here."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("affaccel_home")
    mp.setenv("AFFACCEL_HOME", str(path))
    yield path
    mp.undo()


def _run(home, name, *flags, epochs=1):
    from affaccel import train

    run = home / name
    assert train.main(["--task", "va", *TINY, "--run-dir", str(run), "--epochs", str(epochs), *flags]) == 0
    return run, json.loads((run / "config.json").read_text()), json.loads((run / "final_metrics.json").read_text())


def test_ablation_flags_change_the_model_and_the_features(home):
    from affaccel.bundle import load_bundle
    from affaccel.config import finetune_preset
    from affaccel.nn.clip import build_encoder
    from affaccel.nn.tcn import TCN

    _, full_cfg, full = _run(home, "full")
    _, no_tcn_cfg, no_tcn = _run(home, "no_tcn", "--no-tcn")
    _, no_tr_cfg, no_tr = _run(home, "no_tr", "--no-transformer")
    _, no_ft_cfg, no_ft = _run(home, "no_ft", "--no-finetune")
    assert full_cfg["model"]["use_tcn"] and full_cfg["model"]["use_transformer"]
    assert not no_tcn_cfg["model"]["use_tcn"] and no_tcn_cfg["model"]["use_transformer"]
    assert no_tr_cfg["model"]["use_tcn"] and not no_tr_cfg["model"]["use_transformer"]
    models = {n: load_bundle(f["bundle"]) for n, f in
              (("full", full), ("no_tcn", no_tcn), ("no_tr", no_tr), ("no_ft", no_ft))}
    assert isinstance(models["full"].models["va"].front, TCN)
    assert not isinstance(models["no_tcn"].models["va"].front, TCN)
    assert models["full"].models["va"].encoder is not None and models["no_tr"].models["va"].encoder is None
    # --no-finetune: the features come from the encoder fine-tuning starts from
    start = build_encoder(finetune_preset("tiny").clip)
    assert models["no_ft"].encoder.identity() == start.identity()
    assert models["full"].encoder.identity() != start.identity()
    assert models["no_tcn"].encoder.identity() == models["full"].encoder.identity()


def test_k_fold_protocol(home, capsys):
    from affaccel import train
    from affaccel.data.affwild2 import load_affwild2
    from affaccel.data.synthetic import ensure_synthetic

    base = home / "folds"
    assert train.main(["--task", "va", *TINY, "--run-dir", str(base), "--epochs", "1", "--folds", "2"]) == 0
    out = capsys.readouterr().out
    assert "2-fold protocol" in out and "mean" in out and "fold 0 = the official split" in out
    report = json.loads((base / "folds.json").read_text())
    assert report["k"] == 2 and len(report["folds"]) == 2
    per_fold = [json.loads((base / f"fold{f}" / "final_metrics.json").read_text()) for f in range(2)]
    for key in ("ccc_valence", "ccc_arousal", "ccc_mean"):
        assert report["mean"][key] == pytest.approx(np.mean([m[key] for m in per_fold]))
        assert [m[key] for m in report["folds"]] == pytest.approx([m[key] for m in per_fold])
    # fold 0 validates on the official validation videos; fold 1 on the training videos
    data = load_affwild2(ensure_synthetic("tiny"), tasks=("va", "expr", "au"), splits=("train", "val"))
    official_val = {r.video_id for r in data.by_split("val", "va")}
    assert set(per_fold[0]["per_video"]) == official_val
    assert set(per_fold[1]["per_video"]) == {r.video_id for r in data.by_split("train", "va")}
    assert len(list((home / "finetune").glob("*/done.json"))) >= 2  # each fold fine-tunes on its own videos


def test_ablation_command(home, capsys):
    from affaccel import ablate

    out = home / "ablation"
    assert ablate.main(["--task", "va", "--synthetic", "tiny", "--preset", "tiny", "--epochs", "1",
                        "--seeds", "0", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "ablation.json").read_text())
    assert set(report["rows"]) == {"full", "w/o fine-tuning", "w/o TCN", "w/o Transformer"}
    for row in report["rows"].values():
        assert np.isfinite(row["ccc_mean"])
    assert "w/o Transformer" in printed and "ccc_mean" in printed
    cfgs = {p.parent.name: json.loads(p.read_text())["model"] for p in out.glob("*/config.json")}
    assert cfgs["wo_TCN-seed0"]["use_tcn"] is False and cfgs["full-seed0"]["use_tcn"] is True
    assert cfgs["wo_Transformer-seed0"]["use_transformer"] is False
    # one change per row: the variants train on the same videos with the same training config
    assert report["rows"]["w/o fine-tuning"] != report["rows"]["full"]
