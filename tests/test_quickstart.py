"""The quickstart's stages called from Python (sdeflow.quickstart), at toy size, with their progress reports."""

from __future__ import annotations

import io

import pytest
import torch

from sdeflow import quickstart as qs
from sdeflow.data import load_dataset
from sdeflow.progress import PLAIN_LINES, Progress, ProgressBar


def test_stages_run_and_report_progress_in_a_few_plain_lines(tmp_path) -> None:
    train_set, test_set = load_dataset("digits"), load_dataset("digits", "test")
    events: list[Progress] = []
    result, ckpt = qs.train_digits(tmp_path / "model", steps=3, batch_size=8, seed=0, progress=events.append)
    assert [(e.stage, e.done, e.total) for e in events] == [("train", s, 3) for s in (1, 2, 3)]
    assert ckpt.sample_shape == (1, 8, 8) and len(result.loss) == 3

    log = io.StringIO()  # not a terminal, as in CI
    bar = ProgressBar("bits/dim", "draw", stream=log)
    bpd = qs.evaluate_bits_per_dim(ckpt, train_set, test_set, 2, seed=0, progress=bar)
    assert 1 <= len(log.getvalue().splitlines()) <= PLAIN_LINES
    assert torch.all(bpd.importance <= bpd.model + 1e-9)  # Jensen: the importance-weighted bound is tighter
    test_bpd = bpd.report(seconds=1.0)
    assert test_bpd["difference_model_minus_gaussian"] == pytest.approx(test_bpd["model"] - test_bpd["gaussian"])

    samples, rows = qs.draw_samples(ckpt, 2, 0, test_set)
    assert [r["nfe"] for r in rows[:2]] == [50, 20] and all(r["status"] == "success" for r in rows)
    paths = qs.save_figures(tmp_path, samples, test_set, result)
    assert all(p.stat().st_size > 0 for p in paths)
    report = qs.build_report(tmp_path, train_set, test_set, result, ckpt, test_bpd, rows) | {"total_seconds": 1.0}
    table = qs.summary_table(report)
    assert "DPM-Solver++(2M), 20 steps" in table and f"{test_bpd['model']:.3f}" in table
