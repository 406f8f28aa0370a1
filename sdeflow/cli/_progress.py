"""Progress bars for the CLI: tqdm on a terminal, a few plain lines elsewhere (a CI log stays readable)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from ..progress import Progress

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
        info = ", ".join(f"{k} {v:.4g}" for k, v in event.info.items())
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
