"""Atomic writes leave either the complete new file or nothing; broadcasting helpers."""

import os
import stat

import pytest
import torch

from sdeflow._utils import append_dims, atomic_write, batch_time


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write(path, lambda p: p.write_text("first"))
    atomic_write(path, lambda p: p.write_text("second"))
    assert path.read_text() == "second"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def fail(p):
        p.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_broadcast_helpers():
    x = torch.zeros(3, 2, 4)
    assert append_dims(torch.ones(3), x.ndim).shape == (3, 1, 1)
    assert batch_time(0.5, x).shape == (3,)
    with pytest.raises(ValueError, match="`t` must be a scalar or have shape"):
        batch_time(torch.ones(2), x)
