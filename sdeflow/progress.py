"""The one progress event the library reports through its ``progress=`` / ``callback=`` arguments, and the bar
that shows such events.

Library functions never draw progress bars themselves: they call ``progress(Progress(...))``. The CLI (or a user)
passes a ``ProgressBar``, which is a tqdm bar on a terminal and a few plain lines in a log (a CI log of one
quickstart is not mostly progress bars).

What each stage reports (``info`` holds numbers, ``tensors`` the tensors of the moment):

- 'train' (``sdeflow.train.train``): done / total in steps; info loss, lr, elapsed (seconds), and test_loss on
  evaluation steps only.
- 'sample' (``sdeflow.sample``): fixed-grid samplers after each grid step, info t (the step's end time) and nfe,
  tensors denoised (x0_hat of the step's last evaluation, [B, ...]); torchdiffeq / torchsde solvers after each
  network evaluation, done = nfe of total ``math.inf`` (the solver owns the steps), info nfe.
  ``sample_many``: chunks of this rank.
- 'likelihood': ``log_likelihood`` the fraction of [eps, T] solved (total 1.0); ``evaluate_dataset`` examples of
  this rank.
- 'bits/dim' (``sdeflow.quickstart``): draws done (fractional). ``run_quickstart``: 'train', then 'bits/dim'.
- 'time to quality' (``sdeflow.export.report.time_to_quality``): candidates searched, tuned candidates and batch sizes
  timed; label what was measured, info its figures (seconds, error, steps, nfe; milliseconds and speedup).
- 'compare' (``sdeflow.compare.compare``): rows scored (solver x budget); label the solver, info nfe, steps, error.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Progress", "ProgressBar", "StageBars", "PLAIN_LINES"]


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of ``stage`` are finished.

    Attributes:
        stage: what is progressing ('train', 'likelihood', 'sample', ...).
        done, total: units finished and planned (steps, examples, batches; a fraction with total 1.0;
            ``math.inf`` when the total is not known in advance).
        info: figures worth showing next to the bar (e.g. {'loss': 5.9}).
        tensors: tensors of the moment for callers that want them (e.g. {'denoised': x0_hat} after a sampler's
            grid step); a progress bar ignores them.
        label: what this unit of the stage was (e.g. the solver of a 'compare' row); '' when the units are alike.
    """

    stage: str
    done: float
    total: float
    info: Mapping[str, float] = field(default_factory=dict)
    tensors: Mapping[str, Tensor] = field(default_factory=dict)
    label: str = ""

    @property
    def fraction(self) -> float:
        """done / total in [0, 1] (1 when total is 0)."""
        return min(max(self.done / self.total, 0.0), 1.0) if self.total else 1.0


PLAIN_LINES = 4  # lines a bar writes when its stream is not a terminal: at 25 %, 50 %, 75 % and 100 %


class ProgressBar:
    """Shows ``sdeflow.progress.Progress`` events of one stage: call it with each event, ``close()`` at the end.

    ``enabled=False`` shows nothing. On a terminal it is a tqdm bar (its total from the first event); otherwise it
    prints one line each time another quarter of the work is done, so a log holds ``PLAIN_LINES`` lines per bar rather
    than one per update.
    """

    def __init__(self, desc: str, unit: str, *, enabled: bool = True, stream: TextIO | None = None):
        self.desc, self.unit = desc, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._shown = 0  # quarters already printed (plain mode)
        self._done = 0.0
        self._bar: Any = None

    def __call__(self, event: Progress) -> None:
        if not self.enabled:
            return
        parts = [event.label] if event.label else []
        info = ", ".join(parts + [f"{k} {v:.4g}" for k, v in event.info.items()])
        if self._bar is None and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=event.total, desc=self.desc, unit=self.unit, leave=False, file=self.stream)
        if self._bar is not None:
            self._bar.update(event.done - self._done)
            if info:
                self._bar.set_postfix_str(info, refresh=False)
        else:
            quarter = int(PLAIN_LINES * event.fraction)
            if quarter > self._shown:
                self._shown = quarter
                tail = f" ({info})" if info else ""
                print(f"{self.desc}: {event.done:g}/{event.total:g} {self.unit}{tail}", file=self.stream, flush=True)
        self._done = event.done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class StageBars:
    """Shows the events of a function that reports several stages (``sdeflow.quickstart.run_quickstart``): one
    ``ProgressBar`` per stage, named after it, with its unit from ``units``; a new stage closes the last one's bar.
    A context manager that closes the last bar on exit."""

    def __init__(self, units: Mapping[str, str], *, enabled: bool = True, stream: TextIO | None = None):
        self.units, self.enabled, self.stream = dict(units), enabled, stream
        self._bar: ProgressBar | None = None

    def __call__(self, event: Progress) -> None:
        if self._bar is None or self._bar.desc != event.stage:
            self.close()
            self._bar = ProgressBar(event.stage, self.units.get(event.stage, ""), enabled=self.enabled,
                                    stream=self.stream)
        self._bar(event)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> StageBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
