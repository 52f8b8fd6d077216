"""Atomic writes: all or nothing, and ordinary permissions."""
from __future__ import annotations

import os

import pytest

from affaccel import io_utils


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a" / "out.json"
    io_utils.atomic_write_json(p, {"x": 1})
    io_utils.atomic_write_json(p, {"x": 2})
    assert p.read_text().strip().endswith("}") and '"x": 2' in p.read_text()
    assert [f.name for f in p.parent.iterdir()] == ["out.json"]


def test_interrupted_write_keeps_old_file(tmp_path):
    p = tmp_path / "out.txt"
    io_utils.atomic_write_text(p, "old")

    def boom(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io_utils.atomic_write_with(p, boom)
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["out.txt"]


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = tmp_path / "out.bin"
        io_utils.atomic_write_bytes(p, b"x")
        assert (p.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)


class _Foreign:
    """Not a plain value: torch.load(weights_only=True) refuses a file holding one."""


def test_every_affaccel_loader_names_the_file_and_never_suggests_unsafe_loading(tmp_path):
    """Bundles, temporal checkpoints, CLIP and EmoCLIP checkpoints all load through
    io_utils.read_torch_file: a missing file is FileNotFoundError, a foreign pickle or a truncated
    file a ValueError naming the path, without torch's advice to pass weights_only=False."""
    import torch

    from affaccel.bundle import read_bundle_dict
    from affaccel.emoclip.model import load_emoclip
    from affaccel.io_utils import read_torch_file
    from affaccel.nn.clip import load_encoder_checkpoint
    from affaccel.stages.temporal import load_checkpoint

    foreign, cut = tmp_path / "foreign.pt", tmp_path / "cut.pt"
    torch.save({"x": _Foreign()}, foreign)
    torch.save({"w": torch.zeros(1000)}, cut)
    cut.write_bytes(cut.read_bytes()[:300])
    import pickle

    with pytest.raises(pickle.UnpicklingError) as raw:
        torch.load(foreign, weights_only=True)
    assert "weights_only" in str(raw.value)          # what torch itself would have printed
    loaders = (read_bundle_dict, load_checkpoint, load_encoder_checkpoint, load_emoclip,
               lambda p: read_torch_file(p, "missing", "unreadable"))
    for load in loaders:
        for bad in (foreign, cut):
            with pytest.raises(ValueError) as e:
                load(bad)
            assert str(bad) in str(e.value) and "weights_only" not in str(e.value), (load, str(e.value))
        with pytest.raises(FileNotFoundError):
            load(tmp_path / "nope.pt")
