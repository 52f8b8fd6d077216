"""The acceptance targets of the main job on the built-in synthetic set, CPU preset (issues 5
and 6): the README's command reaches a validation mean CCC >= 0.5 for VA, fine-tuning lifts the
validation expression F1 well above chance, and the EXPR and AU jobs beat chance clearly.

This runs the real thing (default synthetic set, fine-tuning, extraction, three temporal
trainings): about 7-8 minutes on 2 idle CPU cores. Deselect with ``-m "not slow"``.
"""
from __future__ import annotations

import json

import pytest

# Chance levels on the synthetic validation set: a uniform guess scores about 0.11 macro F1 on
# EXPR (8 classes), always predicting the majority class 0.05 (both computed on the set).
VA_TARGET = 0.5          # issue 6 acceptance
EXPR_F1_FLOOR = 0.25     # stage 1 and stage 3, "well above chance" (measured 0.34 / 0.32)
AU_F1_FLOOR = 0.33       # measured 0.405; predicting every AU "on" scores 0.26 (computed)


@pytest.mark.slow
def test_cpu_main_job_reaches_targets(tmp_path, monkeypatch, capsys):
    from affaccel import train as T

    monkeypatch.setenv("AFFACCEL_HOME", str(tmp_path / "home"))
    final, stamps = {}, []
    home = tmp_path / "home"
    for task in ("va", "expr", "au"):
        run = tmp_path / task
        assert T.main(["--task", task, "--preset", "cpu", "--run-dir", str(run), "--quiet"]) == 0
        final[task] = json.loads((run / "final_metrics.json").read_text())
        stamps.append(sorted((str(p), p.stat().st_mtime_ns) for p in
                             [*home.glob("finetune/*/done.json"), *home.glob("features/*/manifest.json")]))
    out = capsys.readouterr().out
    assert "ccc_mean" in out and "f1_macro" in out

    assert final["va"]["ccc_mean"] >= VA_TARGET, final["va"]
    assert final["expr"]["f1_macro"] >= EXPR_F1_FLOOR, final["expr"]
    assert final["au"]["f1_macro"] >= AU_F1_FLOOR, final["au"]
    # the later tasks reused the cached encoder and features: one fine-tuned encoder, one feature
    # cache, neither rewritten by the EXPR and AU runs (counted, not timed)
    assert len(stamps[0]) == 2 and stamps[0] == stamps[1] == stamps[2], stamps

    # stage 1 on its own: the fine-tuned encoder's validation F1 per epoch (issue 5)
    (ft_dir,) = (tmp_path / "home" / "finetune").iterdir()
    hist = json.loads((ft_dir / "history.json").read_text())
    assert hist[0]["val_macro_f1"] < EXPR_F1_FLOOR <= max(h["val_macro_f1"] for h in hist)
    assert max(h["val_va_ccc_mean"] for h in hist) >= 0.4
