"""Every code block of README.md and docs/*.md runs in the tests, and CI runs the README's exact set-up commands.

Every fence on those pages is ```python or ```bash (any other language is a test failure, so nothing escapes):

- each ```python block runs as written, as a script in a fresh folder;
- each page's ```bash blocks run line by line, as written, in the order of the page, in one temporary folder laid
  out like the repository root (``examples/``, a link to the real one; an empty ``docs/``; ``runs/quickstart/``
  with a tiny trained quickstart model and its ONNX export, as ``sdeflow quickstart`` leaves them), so later lines
  use what earlier ones wrote. ``sdeflow ...`` runs in-process through ``sdeflow.cli.main``, ``python SCRIPT.py ...``
  through runpy, ``cp`` through shutil, ``torchrun ...`` as a real 2-process run (``python -m torch.distributed.run``,
  gloo on the CPU); ``&&`` chains commands, anything else (another program, a pipe, a redirection, a variable) is a
  test failure. Each command must exit with status 0 and write what its ``--out`` (or ``cp``'s target) names.
  Sizes that would take minutes (``--steps 2000``, all 297 test digits, ...) are replaced by small ones through the
  one table ``SIZES`` below, applied to the command text; a test fails if an entry is never used.

A block that is not run here is marked by a line directly above its fence: ``<!-- not-run: needs a GPU -->`` or
``<!-- not-run: needs torchrun -->`` (a python block that needs several processes), and for a ```bash block
``<!-- main-job -->`` / ``<!-- test-command -->``: the README's two set-up commands, which CI runs itself (.ci/run
finds them by these markers; a copy on another page must equal the README's). Any other marker is a test failure.
"""

from __future__ import annotations

import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:<!-- (?P<marker>[^>]*?) -->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```", flags=re.S)
ALLOWED_REASONS = ("needs a GPU", "needs torchrun")
NOT_RUN = tuple(f"not-run: {reason}" for reason in ALLOWED_REASONS)
CI_MARKERS = ("main-job", "test-command")  # the README's set-up commands, run by .ci/run

# The only changes made to a documented command line before it runs: sizes. Each entry replaces the words on the
# left (whole words only) wherever they occur; everything else runs exactly as written.
SIZES = {
    "--steps 2000": "--steps 2",  # training runs: the quickstart UNet at 2 steps, not 2000 (about 0.1 s a step)
    "--steps 4000": "--steps 4",  # the resumed run: twice the first, as in the guide
    "--p-uncond 0.1": "--p-uncond 0.1 --steps 2",  # guidance.md's run trains the default 2000 steps
    # not all 297 test digits (a --limit written later on the line, pictures.md's 64, still wins)
    "sdeflow likelihood --checkpoint": "sdeflow likelihood --limit 8 --checkpoint",
    "sdeflow tune-grid": "sdeflow tune-grid --calibration 8 --max-evals 4",  # not 256 x_T and 400 runs per NFE
    "--n 30": "--n 3",  # examples/classify_digits.py: ten likelihood solves per digit
}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    marker: str | None
    code: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            fence_line = text.count("\n", 0, m.start("lang")) + 1
            found.append(Block(page, fence_line, m.group("lang"), m.group("marker"), m.group("code")))
    return found


def _check_marker(block: Block) -> str | None:
    """The reason a block is not run here (None: it runs); a test failure for a marker that is not allowed."""
    marker = block.marker
    if marker is None:
        return None
    if marker in NOT_RUN:
        return marker
    if block.lang == "bash" and marker in CI_MARKERS:
        return "run by CI (.ci/run)"
    allowed = [*NOT_RUN, *(f"{m} (bash only)" for m in CI_MARKERS)]
    pytest.fail(f"{block.id}: marker <!-- {marker} --> is not one of {allowed}")


def _python_params() -> list:
    params = []
    for b in _blocks():
        if b.lang == "python":
            marks = [pytest.mark.skip(reason=f"marked {b.marker}")] if b.marker in NOT_RUN else []
            params.append(pytest.param(b, id=b.id, marks=marks))
    return params


def _command(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)\n```", README, flags=re.S)
    assert match, f"README.md lacks the <!-- {marker} --> command block"
    return match.group(1).strip()


@pytest.mark.parametrize("block", _python_params())
def test_docs_python_block_runs(block, tmp_path, monkeypatch):
    assert block.marker is None, f"{block.id}: marker <!-- {block.marker} --> is not an accepted one"
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "block.py"
    script.write_text(block.code)
    runpy.run_path(str(script), run_name="__main__")


def test_every_fence_is_python_or_bash_and_collected():
    """Each fence opens a ```python or ```bash block that the pattern finds (a fence of another language, or one the
    pattern missed, would silently go untested)."""
    opening = 0
    for page in PAGES:
        inside = False
        for k, line in enumerate(page.read_text().splitlines(), 1):
            fence = re.fullmatch(r"\s*```(\S*)\s*", line)
            if fence:
                if not inside:
                    lang = fence.group(1)
                    assert lang in ("python", "bash"), f"{page.relative_to(ROOT)}:{k}: a ```{lang} block is not run"
                    opening += 1
                inside = not inside
    assert opening == len(_blocks()) > 0


def test_markers_are_allowed_and_ci_commands_are_the_readmes():
    """Every marker above a fence is an accepted one; a set-up block marked as run by CI shows exactly the README's
    command that .ci/run runs."""
    for block in _blocks():
        _check_marker(block)
        if block.marker in CI_MARKERS:
            assert block.code.strip() == _command(block.marker), f"{block.id} differs from README's {block.marker}"



@pytest.mark.parametrize(
    ("lang", "marker"),
    [("python", "not-run: slow"), ("bash", "not-run: needs a big machine"), ("bash", "needs a GPU"),
     ("python", "main-job")],
)
def test_an_unaccepted_marker_fails(lang, marker):
    with pytest.raises(pytest.fail.Exception, match="is not one of"):
        _check_marker(Block(ROOT / "docs" / "new.md", 1, lang, marker, "pass\n"))

def test_ci_runs_the_readme_commands():
    """.ci/run extracts the README's two commands by their markers; check it finds exactly what the README shows."""
    main_job, test_command = _command("main-job"), _command("test-command")
    out = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run"), "--print-commands"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [main_job, test_command]


# ------------------------------------------------------------------------------------------------------------------
# ```bash blocks


@dataclass(frozen=True)
class Line:
    block: Block
    offset: int  # line of the command inside the block, 0-based
    text: str  # as written
    run: str  # after SIZES

    @property
    def where(self) -> str:
        return f"{self.block.page.relative_to(ROOT)}:{self.block.line + 1 + self.offset}"


def _resize(text: str) -> str:
    for old, new in SIZES.items():
        text = re.sub(rf"(?<!\S){re.escape(old)}(?!\S)", lambda _, new=new: new, text)
    return text


def _bash_lines(page: Path | None = None) -> list[Line]:
    """The command lines of the bash blocks that run here (of one page, or of all), in page order."""
    lines = []
    for block in _blocks():
        if block.lang != "bash" or (page is not None and block.page != page) or block.marker is not None:
            continue  # a marked block: test_markers_are_allowed_and_ci_commands_are_the_readmes checks its marker
        raw = block.code.replace("\\\n", " ").splitlines()
        for k, text in enumerate(raw):
            if text.strip() and not text.lstrip().startswith("#"):
                lines.append(Line(block, k, text.strip(), _resize(text.strip())))
    return lines


def _bash_pages() -> list:
    return [pytest.param(p, id=str(p.relative_to(ROOT))) for p in PAGES if _bash_lines(p)]


def _commands(line: Line) -> list[list[str]]:
    """The commands of one line (``a && b`` is two), as argument lists; anything else a shell would interpret fails."""
    lex = shlex.shlex(line.run, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lex:
        if token == "&&":
            commands.append([])
        elif set(token) <= set(lex.punctuation_chars) or re.search(r"[$`*?~]", token):
            pytest.fail(f"{line.where}: the test does not run `{token}` (in {line.text!r}); write plain commands")
        else:
            commands[-1].append(token)
    assert all(commands), f"{line.where}: an empty command in {line.text!r}"
    return commands


def _outputs(argv: list[str]) -> list[Path]:
    """What a command names as its output: the value of ``--out``, or the target of ``cp``."""
    if argv[0] == "cp":
        target = Path(argv[-1])
        return [target / Path(argv[-2]).name if target.is_dir() else target]
    outs = [a.split("=", 1)[1] for a in argv if a.startswith("--out=")]
    outs += [b for a, b in zip(argv, argv[1:], strict=False) if a == "--out"]
    return [Path(o) for o in outs]


def _state(path: Path, tune_grid: bool) -> dict[str, tuple[int, int]]:
    """The files at ``path`` (a file or a folder; for tune-grid's prefix form also ``<path>-nfe<N>.json``)."""
    files = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
    if tune_grid and not path.exists():
        files = sorted(path.parent.glob(f"{path.name}-nfe*.json"))
    return {str(f): (f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file()}


def _run(argv: list[str], where: str, monkeypatch) -> tuple[int, str]:
    """Run one command in the current folder; its exit status and, from a subprocess, its output."""
    program, args = argv[0], argv[1:]
    if program == "sdeflow":
        from sdeflow.cli import main

        try:
            return int(main(args) or 0), ""
        except SystemExit as exc:  # argparse: --help, usage errors
            return (exc.code if isinstance(exc.code, int) else 1), str(exc.code or "")
    if program in ("python", "python3"):
        if not args or not args[0].endswith(".py") or not Path(args[0]).is_file():
            pytest.fail(f"{where}: the test runs `python SCRIPT.py ARGS` only (a file); got {' '.join(argv)!r}")
        with monkeypatch.context() as m:
            m.setattr(sys, "argv", list(args))
            m.syspath_prepend(str(Path(args[0]).resolve().parent))
            try:
                runpy.run_path(args[0], run_name="__main__")
            except SystemExit as exc:
                return (exc.code if isinstance(exc.code, int) else 1 if exc.code else 0), str(exc.code or "")
        return 0, ""
    if program == "cp":
        if len(args) != 2 or any(a.startswith("-") for a in args):
            pytest.fail(f"{where}: the test runs `cp SOURCE TARGET` only; got {' '.join(argv)!r}")
        shutil.copy(args[0], args[1])
        return 0, ""
    if program == "torchrun":  # a real multi-process run; torchrun is `python -m torch.distributed.run`
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", *args], capture_output=True, text=True, timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        return proc.returncode, (proc.stdout + proc.stderr)[-3000:]
    pytest.fail(f"{where}: the test does not know how to run `{program}` (in {' '.join(argv)!r}); add it to _run in "
                "tests/test_readme.py or mark the block not-run with an accepted reason")


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> Path:
    """``runs/quickstart`` as ``sdeflow quickstart`` leaves it, at toy size: the quickstart's class-conditional UNet
    trained for 3 steps by its own stage (``sdeflow.quickstart.train_digits``) in ``model/``, and ``model.onnx`` (its
    DDIM sampler, 5 steps)."""
    from sdeflow import quickstart as qs
    from sdeflow.export import export_ddim

    out = tmp_path_factory.mktemp("quickstart")
    qs.train_digits(out / "model", steps=3, batch_size=8, seed=0)
    export_ddim(out / "model", out / "model.onnx", steps=5, batch_sizes=(1,))
    return out


@pytest.mark.parametrize("page", _bash_pages())
def test_docs_bash_lines_run(page, quickstart_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDEFLOW_TRACEBACK", "1")  # an in-process failure shows its traceback, not one line
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    (tmp_path / "docs").mkdir()  # the guides' pictures are copied here, not over the real ones
    shutil.copytree(quickstart_run, tmp_path / "runs" / "quickstart")
    for line in _bash_lines(page):
        for argv in _commands(line):
            outputs = {out: _state(out, argv[:2] == ["sdeflow", "tune-grid"]) for out in _outputs(argv)}
            code, output = _run(argv, line.where, monkeypatch)
            output += capsys.readouterr().err[-3000:]
            shown = line.text if line.run == line.text else f"{line.text!r}, run as {line.run!r}"
            assert code == 0, f"{line.where}: {shown} exited with {code}:\n{output}"
            for out, before in outputs.items():
                after = _state(out, argv[:2] == ["sdeflow", "tune-grid"])
                assert after and after != before, f"{line.where}: {shown} did not write {out}"


def test_every_size_substitution_is_used():
    """Each entry of SIZES changes some command that runs (an unused one would be a stale promise)."""
    lines = _bash_lines()
    unused = [old for old in SIZES if not any(re.search(rf"(?<!\S){re.escape(old)}(?!\S)", x.text) for x in lines)]
    assert not unused, f"SIZES entries that match no documented command: {unused}"


@pytest.mark.parametrize(
    "text",
    [
        "ls runs",  # a program the test does not run
        "SDEFLOW_TRACEBACK=1 sdeflow sample",  # an environment assignment
        "sdeflow sample --out s.npy | head",  # a pipe
        "sdeflow sample > log.txt",  # a redirection
        "sdeflow sample; sdeflow compare",  # a command list other than &&
        "sdeflow sample --out $OUT",  # a variable
        "cp -r runs/a runs/b",  # cp with options
        "python -m sdeflow sample",  # python without a script file
    ],
)
def test_a_line_the_runner_does_not_understand_fails(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = Line(Block(ROOT / "docs" / "new.md", 1, "bash", None, text), 0, text, text)
    with pytest.raises(pytest.fail.Exception, match="the test"):
        for argv in _commands(line):
            _run(argv, line.where, monkeypatch)
