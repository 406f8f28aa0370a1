"""One progress event type; the CLI's bar degrades to a few plain lines when its stream is not a terminal."""

from __future__ import annotations

import io

from sdeflow.progress import PLAIN_LINES, Progress, ProgressBar


def test_plain_stream_gets_one_line_per_quarter() -> None:
    stream = io.StringIO()  # not a terminal
    bar = ProgressBar("train", "step", stream=stream)
    for done in range(1, 1001):
        bar(Progress("train", done, 1000, {"loss": 1.0 / done}))
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == PLAIN_LINES == 4
    assert lines[0].startswith("train: 250/1000 step (loss 0.004") and lines[-1].startswith("train: 1000/1000 step")


def test_disabled_bar_writes_nothing() -> None:
    stream = io.StringIO()
    bar = ProgressBar("likelihood", "ex", enabled=False, stream=stream)
    bar(Progress("likelihood", 5, 5))
    assert stream.getvalue() == ""


def test_fraction_is_clamped() -> None:
    assert Progress("x", 3, 2).fraction == 1.0 and Progress("x", 0, 0).fraction == 1.0
    assert Progress("x", 1, 4).fraction == 0.25


def test_a_label_leads_the_figures_beside_the_bar() -> None:
    stream = io.StringIO()
    bar = ProgressBar("compare", "row", stream=stream)
    bar(Progress("compare", 4, 4, {"nfe": 10}, label="ddim"))
    assert stream.getvalue() == "compare: 4/4 row (ddim, nfe 10)\n"


def test_stage_bars_show_one_bar_per_stage() -> None:
    from sdeflow.progress import StageBars

    stream = io.StringIO()
    with StageBars({"train": "step", "bits/dim": "draw"}, stream=stream) as bars:
        for done in (1, 2):
            bars(Progress("train", done, 2))
        bars(Progress("bits/dim", 4, 4))
    assert stream.getvalue().splitlines() == ["train: 1/2 step", "train: 2/2 step", "bits/dim: 4/4 draw"]
