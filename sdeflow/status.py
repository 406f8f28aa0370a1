"""The statuses every result shares (``SampleResult``, ``LikelihoodResult``, ``CompareRow``, summaries).

'success': every output is finite. 'nonfinite': the computation ran to the end but some output is NaN or inf
(sampling reports it so that one bad sample does not lose a batch; likelihood computations raise
``LikelihoodError`` instead, so their status is always 'success').
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

__all__ = ["Status", "STATUSES", "worst_status"]

Status = Literal["success", "nonfinite"]
STATUSES: tuple[Status, ...] = get_args(Status)


def worst_status(statuses: Iterable[Status]) -> Status:
    """The status of a result made of parts: 'success' only if every part succeeded."""
    return "success" if all(s == "success" for s in statuses) else "nonfinite"
