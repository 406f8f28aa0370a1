"""Every ```python block of README.md and docs/*.md runs as written, and CI runs the README's exact set-up commands.

A block that cannot run on this machine is marked by the line ``<!-- not-run: REASON -->`` directly above it. The
only accepted reasons are that it needs a GPU or torchrun (several processes); anything else is a test failure, so a
guide cannot quietly stop being checked.
"""

import re
import runpy
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- not-run: (?P<reason>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", flags=re.S)
ALLOWED_REASONS = ("needs a GPU", "needs torchrun")


def _blocks() -> list:
    params = []
    for page in PAGES:
        for k, m in enumerate(BLOCK.finditer(page.read_text())):
            reason = m.group("reason")
            marks = [pytest.mark.skip(reason=f"marked not-run: {reason}")] if reason in ALLOWED_REASONS else []
            params.append(pytest.param(m.group("code"), reason, id=f"{page.relative_to(ROOT)}-{k}", marks=marks))
    return params


def _command(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)\n```", README, flags=re.S)
    assert match, f"README.md lacks the <!-- {marker} --> command block"
    return match.group(1).strip()


@pytest.mark.parametrize(("code", "reason"), _blocks())
def test_docs_python_block_runs(code, reason, tmp_path, monkeypatch):
    assert reason is None, f"not-run reason {reason!r} is not one of {ALLOWED_REASONS}"
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "block.py"
    script.write_text(code)
    runpy.run_path(str(script), run_name="__main__")


def test_every_page_with_code_is_collected():
    """The pattern finds every python fence (a fence it missed would silently go untested)."""
    fences = sum(page.read_text().count("```python\n") for page in PAGES)
    assert fences == len(_blocks()) > 0


def test_ci_runs_the_readme_commands():
    """.ci/run extracts the README's two commands by their markers; check it finds exactly what the README shows."""
    main_job, test_command = _command("main-job"), _command("test-command")
    out = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run"), "--print-commands"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [main_job, test_command]
