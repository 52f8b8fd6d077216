"""The paper's ablation (Table 2): full model vs without fine-tuning / TCN / Transformer.

    python -m affaccel.ablate --task va [--data-root DIR] [--seeds 0 1 2] [--out DIR]

Every variant trains on the same videos with the same seeds and the same training config; only
one thing changes per row:

- full:             fine-tuned CLIP features -> TCN -> Transformer -> MLP
- w/o fine-tuning:  features of the encoder fine-tuning starts from (pretrained or random init)
- w/o TCN:          a linear projection instead of the TCN
- w/o Transformer:  the TCN straight into the MLP head

Prints the table and writes it (with every run's metrics) to ``<out>/ablation.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from affaccel import io_utils

VARIANTS = {  # name -> (fine-tuned features?, model overrides)
    "full": (True, {}),
    "w/o fine-tuning": (False, {}),
    "w/o TCN": (True, {"use_tcn": False}),
    "w/o Transformer": (True, {"use_transformer": False}),
}


def run_ablation(job, seeds: Sequence[int] = (0,), out: Path | None = None) -> dict:
    """Train every variant for every seed; returns {"rows": {variant: mean metrics}, "runs": ...}."""
    from affaccel.metrics import format_table, table_keys
    from affaccel.pipeline import prepare, train_stage
    from affaccel.train import default_run_dir

    out = Path(out) if out else default_run_dir(job.task, "ablation")
    preps = {True: prepare(dataclasses.replace(job, finetune=True)),
             False: prepare(dataclasses.replace(job, finetune=False))}
    runs: dict[str, list] = {}
    for name, (finetuned, model) in VARIANTS.items():
        for seed in seeds:
            over = {**job.overrides, "seed": seed, "model": {**(job.overrides.get("model") or {}), **model}}
            vjob = dataclasses.replace(job, finetune=finetuned, overrides=over, quiet_table=True, resume=False)
            slug = name.replace("/", "").replace(" ", "_").replace("-", "")
            result, _ = train_stage(vjob, preps[finetuned], out / f"{slug}-seed{seed}")
            runs.setdefault(name, []).append(result.metrics)
    keys = table_keys(job.task)[:3] if job.task == "va" else table_keys(job.task)[:1]
    rows = {name: {k: float(np.mean([m[k] for m in ms])) for k in ms[0]} for name, ms in runs.items()}
    spread = {name: {k: float(np.std([m[k] for m in ms])) for k in keys} for name, ms in runs.items()}
    table = format_table(list(rows.items()), keys)
    report = {"task": job.task, "seeds": list(seeds), "preset": preps[True].preset, "data_root": str(preps[True].root),
              "rows": rows, "std_over_seeds": spread, "runs": runs, "table": table}
    io_utils.atomic_write_json(out / "ablation.json", report)
    print(f"\nAblation, {job.task.upper()} ({len(seeds)} seed(s), mean over seeds) on {preps[True].root}")
    print(table)
    print(f"written: {out / 'ablation.json'}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    from affaccel.pipeline import JobSpec
    from affaccel.train import PRESETS

    p = argparse.ArgumentParser(prog="python -m affaccel.ablate", description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=["va", "expr", "au"], default="va")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument("--synthetic", choices=["default", "tiny"], default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="default: $AFFACCEL_HOME/runs/<task>-ablation-<time>")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    job = JobSpec(task=a.task, data_root=a.data_root, preset=a.preset, synthetic=a.synthetic,
                  overrides={"epochs": a.epochs}, progress=not a.quiet)
    run_ablation(job, a.seeds, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
