"""Make ``sdeflow.export`` importable from a source checkout.

The top-level ``export/`` folder installs as the subpackage ``sdeflow.export`` (pyproject ``package-dir``), which
wheel and editable installs handle. When ``sdeflow`` is imported straight from a checkout (tests run from the
repository root with the package on ``sys.path``), this finder applies the same mapping. It is inert elsewhere.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_EXPORT_DIR = Path(__file__).resolve().parent.parent / "export"


class _ExportFinder:
    @classmethod
    def find_spec(cls, fullname: str, path: object = None, target: object = None):  # noqa: ANN206
        if fullname != "sdeflow.export" and not fullname.startswith("sdeflow.export."):
            return None
        parts = fullname.split(".")[2:]
        base = _EXPORT_DIR.joinpath(*parts)
        if (base / "__init__.py").is_file():
            return importlib.util.spec_from_file_location(
                fullname, base / "__init__.py", submodule_search_locations=[str(base)]
            )
        if base.with_suffix(".py").is_file():
            return importlib.util.spec_from_file_location(fullname, base.with_suffix(".py"))
        return None


if (_EXPORT_DIR / "__init__.py").is_file() and (_EXPORT_DIR.parent / "pyproject.toml").is_file():
    if not any(f is _ExportFinder for f in sys.meta_path):
        sys.meta_path.append(_ExportFinder)
