"""Command line of the paper's ablation (Table 2): full model vs without fine-tuning / TCN /
Transformer; what each row changes and the ``--probe`` diagnosis: ``affaccel.stages.ablation``.

    python -m affaccel.ablate --task va [--data-root DIR] [--seeds 0 1 2] [--out DIR] [--probe]

Prints the table and writes it (with every run's metrics) to ``<out>/ablation.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from affaccel.config import PRESET_NAMES, JobSpec
    from affaccel.data.layout import add_data_arguments, data_arguments
    from affaccel.stages.ablation import run_ablation

    p = argparse.ArgumentParser(prog="python -m affaccel.ablate", description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=["va", "expr", "au"], default="va")
    add_data_arguments(p)
    p.add_argument("--preset", choices=sorted(PRESET_NAMES), default=None)
    p.add_argument("--synthetic", choices=["default", "tiny"], default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="default: $AFFACCEL_HOME/runs/<task>-ablation-<time>")
    p.add_argument("--probe", action="store_true", help="VA: also probe the features with ridge regressions")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    from affaccel import cli_checks as c

    def check():
        c.at_least("--epochs", a.epochs, 1)
        for s in a.seeds:
            c.at_least("--seeds", s, 0)
        c.folder("--data-root", a.data_root)
        c.output_folder("--out", a.out)

    status = c.report(check)
    if status is not None:
        return status
    data = data_arguments(a)
    job = JobSpec(task=a.task, data_root=data["root"], annotations=data["annotations"], frames=data["frames"],
                  preset=a.preset, synthetic=a.synthetic,
                  overrides={"epochs": a.epochs}, progress=not a.quiet)
    run_ablation(job, a.seeds, a.out, probe=a.probe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
