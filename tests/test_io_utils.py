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
