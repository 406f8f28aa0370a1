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


def test_run_quickstart_is_the_command(tmp_path, monkeypatch, capsys) -> None:
    """``sdeflow quickstart`` prints exactly the lines ``run_quickstart`` returns; the library function reports the
    stages' progress ('train', then 'bits/dim') and writes report.json's sections in order."""
    import json

    import sdeflow
    from sdeflow.cli import main

    runs: list[qs.QuickstartReport] = []
    events: list[Progress] = []

    real = qs.run_quickstart

    def spy(*args, progress, **kwargs) -> qs.QuickstartReport:  # the CLI's call, with its progress bars
        def both(event: Progress) -> None:
            events.append(event)
            progress(event)

        runs.append(real(*args, progress=both, **kwargs))
        return runs[-1]

    monkeypatch.setattr(qs, "run_quickstart", spy)
    out = tmp_path / "qs"
    assert main(["quickstart", "--steps", "3", "--n-test", "2", "--n-samples", "4", "--out", str(out)]) == 0
    (res,) = runs
    assert capsys.readouterr().out == "\n".join(res.lines()) + "\n"
    stage_lines = [e.label for e in events if e.stage == "quickstart"]  # printed as each stage ends
    assert stage_lines == res.lines()[: len(stage_lines)] and len(stage_lines) >= qs.STAGES
    bars = [e for e in events if e.stage != "quickstart"]
    assert [e.stage for e in bars] == ["train"] * 3 + ["bits/dim"] * (len(bars) - 3)
    assert bars[-1].done == bars[-1].total == qs.DRAWS
    assert [e.done for e in events if e.stage == "quickstart"][: qs.STAGES] == [1, 2, 3, 4, 5]
    report = json.loads(res.path.read_text())
    assert list(report) == ["command", "data", "model", "training", "test_bpd", "samplers", "platform", "conditional",
                            "onnx", "total_seconds"]
    assert report == json.loads(json.dumps(res.report)) and res.path == out / "report.json"
    assert [r["sampler"].split(",")[0] for r in report["samplers"]] == [
        "DDIM", "DPM-Solver++(2M)", "adaptive PF-ODE (dopri5)"]
    assert all(p.stat().st_size > 0 for p in res.figures) and (out / "model.onnx").stat().st_size > 0
    assert sdeflow.load(out / "model").sample_shape == res.checkpoint.sample_shape == (1, 8, 8)
    assert res.lines()[1].startswith(f"trained {report['model']['parameters']:,}-parameter UNet for 3 steps")
    with pytest.raises(FileExistsError, match="already holds quickstart results; pass --overwrite"):
        real(out, steps=1)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_test": 1}, r"n_test must be >= 2 \(a standard error needs two images\); got 1"),
    ({"n_test": 1, "names": {"n_test": "--n-test"}}, r"--n-test must be >= 2"),
    ({"steps": 0}, r"`steps` must be an integer >= 1; got 0"),
    ({"n_samples": 2.5}, r"`n_samples` must be an integer >= 1; got 2.5"),
])
def test_run_quickstart_checks_its_arguments_first(tmp_path, kwargs, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        qs.run_quickstart(tmp_path / "qs", **kwargs)
    assert not (tmp_path / "qs").exists()  # nothing trained, nothing written
