"""Architecture checks: the package imports without hacks, the name tables are single, samplers report their config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sdeflow
from sdeflow.sampling import ODESolver, make_sampler
from sdeflow.sde import SDES, VPSDE, make_sde, sde_from_config

ROOT = Path(__file__).resolve().parent.parent


def test_export_is_the_installed_subpackage_with_no_import_hook() -> None:
    """`sdeflow.export` comes from package-dir (editable or wheel install), not from a finder added at import."""
    code = ("import sys; n = len(sys.meta_path); import sdeflow, sdeflow.export.runtime as r; "
            "print(len(sys.meta_path) - n, r.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/").stdout
    assert out.split() == ["0", "sdeflow.export.runtime"]
    assert not (ROOT / "sdeflow" / "_source_layout.py").exists()


def test_one_sde_name_table() -> None:
    assert {name: type(make_sde(name)).__name__ for name in SDES} == {"vp": "VPSDE", "subvp": "SubVPSDE",
                                                                       "ve": "VESDE"}
    assert isinstance(sde_from_config(VPSDE(beta_max=15.0).config()), VPSDE)
    with pytest.raises(ValueError, match=r"Invalid sde 'vpx'. Must be one of \('vp', 'subvp', 've'\)"):
        make_sde("vpx")
    from sdeflow import train

    assert train.SDES is SDES and train.make_sde is make_sde  # re-exported, not copied


def test_every_sampler_reports_its_config() -> None:
    """ODESolver has a field named `options` (torchdiffeq's); the report method is config() on every sampler."""
    assert ODESolver("dopri5", options={"first_step": 0.1}).config()["options"] == {"first_step": 0.1}
    assert make_sampler("ddim", eta=0.5).config() == {"eta": 0.5}


def test_statuses_are_one_literal() -> None:
    from typing import get_args, get_type_hints

    from sdeflow.compare import CompareRow
    from sdeflow.status import STATUSES, Status

    assert STATUSES == ("success", "nonfinite")
    for cls in (sdeflow.SampleResult, sdeflow.LikelihoodResult, CompareRow):
        assert get_args(get_type_hints(cls)["status"]) == get_args(Status)
