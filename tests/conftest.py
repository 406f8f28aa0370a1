"""Test-suite settings. Tests are dominated by small tensor operations, for which intra-op threading costs more than
it gains (and oversubscribes a shared 2-core machine), so the suite runs torch on one thread."""

import torch

torch.set_num_threads(1)


def crash_at_file_operation(monkeypatch, point: int, exc: type[BaseException]) -> list[bool]:
    """Make the (point + 1)-th file operation of a run-folder commit (a synced write or a rename) raise ``exc``, as a
    kill at that instant would; later clean-up (rmtree) is suppressed like a dead process's. Returns the list that
    holds True once the crash happened."""
    import os

    from sdeflow import run_folder

    calls, killed = [0], []
    real_write, real_replace, real_rmtree = run_folder._write_synced, os.replace, run_folder.shutil.rmtree

    def counted(fn):
        def wrapper(*args):
            calls[0] += 1
            if calls[0] == point + 1:
                killed.append(True)
                raise exc
            return fn(*args)

        return wrapper

    monkeypatch.setattr(run_folder, "_write_synced", counted(real_write))
    monkeypatch.setattr(run_folder.os, "replace", counted(real_replace))
    monkeypatch.setattr(run_folder.shutil, "rmtree", lambda *a, **k: None if killed else real_rmtree(*a, **k))
    return killed
