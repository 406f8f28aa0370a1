"""The command-line front end: global options and its error handling."""

import numpy as np
import pytest
import torch

from sdeflow.cli import COMMANDS, build_parser, main


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([name, "--help"])
    assert exc.value.code == 0
    assert f"usage: sdeflow {name}" in capsys.readouterr().out


def test_threads_option(tmp_path):
    before = torch.get_num_threads()
    try:
        out = tmp_path / "s.npy"
        assert main(["--threads", "1", "sample", "--steps", "3", "--n", "4", "--no-progress", "--out", str(out)]) == 0
        assert torch.get_num_threads() == 1
        assert np.load(out).shape == (4, 2)
    finally:
        torch.set_num_threads(before)


def test_threads_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        main(["--threads", "0", "sample"])
    assert "--threads must be a positive integer" in capsys.readouterr().err
