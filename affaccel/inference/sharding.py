"""Prediction over many inputs, shared across the ranks of ``torchrun`` (one GPU each).

``run_inputs`` gives each rank a balanced share of the inputs (``distributed.shard_by_size`` by
file size: frame counts are unknown before decoding); each rank writes its own outputs and keeps
``manifest.part-<rank>.json`` current; at the end the entries are gathered, rank 0 writes the one
``manifest.json`` in input order and deletes the parts. Without a process group it is the plain
loop: the manifest is rewritten after every input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from affaccel.inference.writers import MANIFEST_NAME, write_manifest


def file_size(path) -> int:
    """The expected work of an input for sharding (0 when it cannot be read: it fails fast)."""
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def run_inputs(inputs: Sequence, predict_one: Callable[[int], dict], out, info,
               progress: bool = True) -> list[dict]:
    """``predict_one(i)`` (the manifest entry of input ``i``, failures included) for this rank's
    share of ``inputs``; returns every input's entry, in input order, on every rank.

    info: ``affaccel.distributed.get_info()`` (a single process when not distributed)."""
    from tqdm.auto import tqdm

    from affaccel import distributed

    out = Path(out)
    mine = distributed.shard_by_size([file_size(v) for v in inputs], info.world_size, info.rank)
    part = f"manifest.part-{info.rank}.json" if info.distributed else MANIFEST_NAME
    entries: dict[int, dict] = {}
    bar = tqdm(total=len(mine), desc="videos", unit="video", disable=not progress or len(mine) < 2
               or not info.is_main)
    for i in mine:
        entries[i] = predict_one(i)
        write_manifest(out, list(entries.values()), part)   # after every input: a crash leaves it current
        bar.update()
    bar.close()
    if not info.distributed:
        return [entries[i] for i in mine]
    for shard in distributed.all_gather_object(entries):
        entries.update(shard)
    ordered = [entries[i] for i in range(len(inputs))]
    if info.is_main:
        write_manifest(out, ordered)
        for r in range(info.world_size):
            (out / f"manifest.part-{r}.json").unlink(missing_ok=True)
    distributed.barrier()   # once any rank returns, the manifest is complete
    return ordered


__all__ = ["run_inputs", "file_size"]
