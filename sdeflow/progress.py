"""The one progress event the library reports through its ``progress=`` / ``callback=`` arguments.

Library functions never draw progress bars; the CLI turns these events into one (``sdeflow.cli._progress``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Progress"]


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of ``stage`` are finished.

    Attributes:
        stage: what is progressing ('train', 'likelihood', 'sample', ...).
        done, total: units finished and planned (steps, examples, batches; a fraction with total 1.0).
        info: figures worth showing next to the bar (e.g. {'loss': 5.9}).
    """

    stage: str
    done: float
    total: float
    info: Mapping[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """done / total in [0, 1] (1 when total is 0)."""
        return min(max(self.done / self.total, 0.0), 1.0) if self.total else 1.0
