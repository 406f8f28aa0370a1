"""Every ```python block of README.md runs as written, and CI runs the README's exact set-up commands."""

import re
import runpy
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _command(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)\n```", README, flags=re.S)
    assert match, f"README.md lacks the <!-- {marker} --> command block"
    return match.group(1).strip()


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(BLOCKS[index])
    runpy.run_path(str(script), run_name="__main__")


def test_ci_runs_the_readme_commands():
    """.ci/run extracts the README's two commands by their markers; check it finds exactly what the README shows."""
    main_job, test_command = _command("main-job"), _command("test-command")
    out = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run"), "--print-commands"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [main_job, test_command]
