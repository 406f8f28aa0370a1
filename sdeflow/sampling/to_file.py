"""The sampling commands' work as library functions that write files: samples with their metadata beside them
(``sdeflow sample``) and tuned time grids, one JSON file per NFE budget (``sdeflow tune-grid``).

``sample_to_file(source, 'samples.png', n=64, sampler='dpmsolver++', steps=20)`` draws n samples from a
``sdeflow.sources.ModelSource`` (sample i with seed + i, in chunks dealt to the torchrun processes when there are
several), writes them as the extension says (``sdeflow.images.save_samples``), records the run in ``<out>.json``
and, on request, the denoised estimates x0_hat of the first samples after every step (``trajectory``).
``grid_tuning(source, 'unipc', [5, 8], 'grids/')`` checks a grid search before anything is computed; its ``run()``
tunes and saves one grid per budget (``sdeflow.sampling.tuning``). Every file is written atomically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import distributed as D
from .._utils import atomic_write
from .._validate import json_safe
from ..conditioning import check_guidance, class_labels
from ..parametrization import ScoreModel
from ..progress import Progress
from ..sources import ModelSource
from ..status import Status
from .api import denoised_trajectory
from .grids import Grid
from .many import sample_many
from .methods import GridSampler, Sampler
from .names import make_sampler
from .tuning import TuneResult, calibration_reference, grid_paths, save_grid, steps_for_nfe, tunable_sampler, tune_grid

__all__ = ["Guidance", "guidance_options", "SampleFile", "sample_to_file", "TRAJECTORY_SAMPLES", "GridTuning",
           "grid_tuning"]

TRAJECTORY_SAMPLES = 8  # the trajectory shows the first 8 samples (or all, when there are fewer)


@dataclass(frozen=True)
class Guidance:
    """Validated conditioning of a sampling run: per-sample class labels ``cond`` [n] (None: unconditional), the
    guidance weight w, the guidance rescale phi and the guidance interval (t_lo, t_hi); None = not given."""

    cond: Tensor | None = None
    guidance: float | None = None
    rescale: float | None = None
    interval: tuple[float, float] | None = None

    def sample_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``sdeflow.sample`` / ``sample_many`` these settings stand for."""
        return {"cond": self.cond, "guidance": self.guidance, "guidance_rescale": self.rescale,
                "guidance_interval": self.interval}

    def first(self, k: int) -> Guidance:
        """The same settings for the first ``k`` samples only."""
        return self if self.cond is None else replace(self, cond=self.cond[:k])


def _times(value: str | Sequence[float], name: str) -> tuple[float, float]:
    """'0.1,0.7' or a pair -> (0.1, 0.7); anything else is a ValueError naming ``name``."""
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        times = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        times = ()
    if len(times) != 2:
        raise ValueError(f"`{name}` must be two times T_LO,T_HI such as 0.1,0.7; got {value!r}.")
    return times[0], times[1]


def guidance_options(
    model: ScoreModel,
    n: int,
    classes: int | Sequence[int] | str | None = None,
    guidance: float | None = None,
    guidance_rescale: float | None = None,
    guidance_interval: str | Sequence[float] | None = None,
    *,
    names: Mapping[str, str] | None = None,
) -> Guidance:
    """Check the conditioning options of a run of ``n`` samples from ``model`` before anything is computed.

    ``classes`` as ``sdeflow.conditioning.class_labels`` takes them (one class, one per sample, or a list whose
    length divides n; a string is a comma list); ``guidance`` (w) and ``guidance_rescale`` (phi in [0, 1]) and
    ``guidance_interval`` ('t_lo,t_hi' or a pair, checked against the model's SDE) need ``classes``.
    ``names`` maps these argument names to the names errors show (the CLI's flags, e.g. {'classes': '--class'}).
    """
    names = names or {}

    def name(key: str) -> str:
        return names.get(key, key)

    cls = name("classes")
    cond = None if classes is None else class_labels(classes, n, model.num_classes, cls)
    for key, value in (("guidance", guidance), ("guidance_rescale", guidance_rescale)):
        if value is not None:
            if cond is None:
                example = f"{cls} 7 {name('guidance')} 2" if cls.startswith("-") else f"{cls}=7, guidance=2"
                raise ValueError(f"{name(key)} needs {cls} (the classes to guide towards), e.g. {example}.")
            check_guidance(value, name(key))
    interval = None
    if guidance_interval is not None:
        if cond is None:
            raise ValueError(f"{name('guidance_interval')} needs {cls} (the classes to guide towards).")
        interval = _times(guidance_interval, name("guidance_interval"))
        model.conditioned(cond, 1.0, interval=interval)  # checks the interval against the SDE before sampling
    if guidance_rescale is not None and not 0 <= guidance_rescale <= 1:
        raise ValueError(f"`{name('guidance_rescale')}` must be a number in [0, 1]; got {guidance_rescale}.")
    return Guidance(cond, guidance, guidance_rescale, interval)


@dataclass(frozen=True)
class SampleFile:
    """The result of ``sample_to_file`` (on rank 0).

    Attributes:
        path: the samples' file; ``metadata`` is what ``<path>.json`` holds (sampler, options, grid, seed, classes,
            guidance, NFE, status, wall time and the source).
        nfe, status, world_size: network evaluations of all chunks, the worst status, the processes that sampled.
        trajectory: the trajectory file (None when not asked for), with ``trajectory_shape`` = (samples, steps).
    """

    path: Path
    n: int
    sampler: str
    steps: int
    nfe: int
    status: Status
    world_size: int
    metadata: Mapping[str, Any] = field(repr=False)
    trajectory: Path | None = None
    trajectory_shape: tuple[int, int] = (0, 0)

    def lines(self) -> list[str]:
        """What ``sdeflow sample`` prints: the trajectory file (when written), then the samples' file, sampler,
        steps, NFE, processes and status."""
        lines = [] if self.trajectory is None else [
            f"trajectory of {self.trajectory_shape[0]} samples ({self.trajectory_shape[1]} steps) -> {self.trajectory}"]
        return [*lines, f"{self.n} samples -> {self.path}  (sampler {self.sampler}, {self.steps} steps, NFE {self.nfe} "
                        f"in all, {self.world_size} process(es), status {self.status})"]


def sample_to_file(
    source: ModelSource,
    out: str | Path,
    n: int = 16,
    *,
    sampler: Sampler | str = "ddim",
    steps: int = 50,
    grid: Grid | str | None = None,
    eps: float = 1e-3,
    set_alpha_to_one: bool | None = None,
    seed: int = 0,
    classes: int | Sequence[int] | str | None = None,
    guidance: float | None = None,
    guidance_rescale: float | None = None,
    guidance_interval: str | Sequence[float] | None = None,
    batch_size: int | None = None,
    device: str | None = "cpu",
    scale: int | None = None,
    trajectory: str | Path | None = None,
    progress: Callable[[Progress], None] | None = None,
    names: Mapping[str, str] | None = None,
) -> SampleFile | None:
    """Draw samples 0..n-1 of ``source`` (sample i with seed + i) and write them to ``out`` (.npy / .npz arrays in
    model space, .png / .pdf / .svg pictures), the metadata to ``<out>.json`` and, with ``trajectory``, the denoised
    estimates x0_hat after every step of the first ``TRAJECTORY_SAMPLES`` samples (``sdeflow.images.save_trajectory``;
    fixed-grid samplers). Returns the record on rank 0 and None on the other torchrun processes.

    ``sampler``, ``steps``, ``grid``, ``eps``, ``set_alpha_to_one`` are those of ``sdeflow.sample``; the conditioning
    options those of ``guidance_options``; ``batch_size`` the chunk size (default min(n, 1024)); ``scale`` the
    upscaling of image grids; ``progress`` gets ``Progress('sample', chunks done, chunks)`` on this process. The file
    names and options are checked before anything is computed; ``names`` maps argument names to the names errors
    show (e.g. {'out': '--out'}).
    """
    from ..images import output_format, picture_extras, save_samples, save_trajectory

    names = names or {}
    out = Path(out)
    output_format(out, source.sample_shape, name=names.get("out", "out"))
    if trajectory is not None:
        output_format(trajectory, source.sample_shape, name=names.get("trajectory", "trajectory"))
    smp = make_sampler(sampler)
    shape, model = source.sample_shape, source.model
    options = guidance_options(model, n, classes, guidance, guidance_rescale, guidance_interval, names=names)
    run = {"sampler": smp, "steps": steps, "grid": grid, "eps": eps, "set_alpha_to_one": set_alpha_to_one}
    t0 = time.perf_counter()
    ctx = D.init_from_env(device)
    try:
        samples, summary = sample_many(model, source.sde, n, shape, batch_size=batch_size or min(n, 1024), seed=seed,
                                       ctx=ctx, progress=progress, device=ctx.device, **run,
                                       **options.sample_kwargs())
    finally:
        D.shutdown()
    if not ctx.is_main:
        return None
    assert samples is not None  # rank 0 holds the gathered samples
    beside = picture_extras(out, shape, data_info=source.data_info, oracle=source.oracle)
    save_samples(out, samples, scale=scale, **beside)
    meta = {
        "sampler": smp.name,
        "options": smp.config(),
        "steps": steps,
        "grid": None if grid is None else (grid if isinstance(grid, str) else grid.config()),
        "seed": seed,
        "sample_shape": list(shape),
        "classes": None if options.cond is None else options.cond.tolist(),
        "guidance": guidance,
        "guidance_rescale": guidance_rescale,
        "guidance_interval": None if options.interval is None else list(options.interval),
        **summary,
        "wall_time_s": round(time.perf_counter() - t0, 3),
        **source.record,
        **({} if source.oracle is not None else {"data": source.data_info}),
    }
    text = json.dumps(json_safe(meta), indent=2, allow_nan=False)
    atomic_write(out.with_suffix(out.suffix + ".json"), lambda tmp: tmp.write_text(text))
    traj_shape = (0, 0)
    if trajectory is not None:
        k = min(n, TRAJECTORY_SAMPLES)  # the first samples again (same seeds, so the same samples)
        _, frames = denoised_trajectory(model, source.sde, shape=(k, *shape), seed=seed, device=ctx.device, **run,
                                        **options.first(k).sample_kwargs())
        trajectory = save_trajectory(trajectory, frames, data=source.data_info)
        traj_shape = (k, len(frames))
    return SampleFile(out, n, smp.name, steps, summary["nfe"], summary["status"], ctx.world_size, meta,
                      None if trajectory is None else Path(trajectory), traj_shape)


@dataclass(frozen=True, eq=False)
class GridTuning:
    """A grid search that ``grid_tuning`` has checked: the deterministic grid ``sampler`` tuned on ``source`` for
    every NFE of ``paths`` (NFE -> the JSON file it writes), with a calibration batch of ``calibration`` x_T drawn
    from the prior with ``seed`` and a dopri5 reference at rtol = atol = ``reference_tol``."""

    source: ModelSource
    sampler: GridSampler
    paths: Mapping[int, Path]
    calibration: int
    seed: int
    eps: float
    candidates: int
    max_evals: int
    reference_tol: float
    device: torch.device

    def run(self) -> Iterator[TuneResult]:
        """Solve the calibration reference once, then tune each budget in turn, save its grid (the times with
        ``TuneResult.info()``, the model's record, the SDE and the calibration seed) and yield its result."""
        src = self.source
        g = torch.Generator().manual_seed(self.seed)
        x_T = src.sde.prior_sampling((self.calibration, *src.sample_shape), generator=g, dtype=src.dtype)
        reference = calibration_reference(src.model, src.sde, x_T.to(self.device), eps=self.eps,
                                          candidates=self.candidates, rtol=self.reference_tol)
        for nfe, path in self.paths.items():
            res = tune_grid(src.model, src.sde, self.sampler, nfe, reference=reference, max_evals=self.max_evals)
            save_grid(path, res.grid, {**res.info(), "model": dict(src.record), "sde": src.sde.config(),
                                       "calibration_seed": self.seed})
            yield res


def grid_tuning(
    source: ModelSource,
    sampler: Sampler | str,
    nfe: Sequence[int],
    out: str | Path,
    *,
    overwrite: bool = False,
    calibration: int = 256,
    seed: int = 0,
    eps: float = 1e-3,
    candidates: int = 128,
    max_evals: int = 400,
    reference_tol: float | None = None,
    device: str | torch.device = "cpu",
) -> GridTuning:
    """Check a grid search before any computing: ``sampler`` must be a deterministic grid sampler that spends every
    budget of ``nfe`` exactly, and ``out`` a folder (``<out>/<sampler>-nfe<N>.json``) or a prefix
    (``<out>-nfe<N>.json``) whose files do not exist yet (unless ``overwrite``; ``sdeflow.sampling.tuning.grid_paths``).
    ``reference_tol`` defaults to 1e-10 on a float64 source (the oracle) and 1e-6 on a float32 one (a network)."""
    from .._validate import check_device, check_int

    smp = tunable_sampler(sampler)
    calibration = check_int(calibration, "calibration", min=1)
    paths = grid_paths(out, smp.name, sorted({int(n) for n in nfe}), overwrite=overwrite)
    for budget in paths:  # every budget reachable, before any computing
        steps_for_nfe(smp, budget, source.sde, source.model.prediction)
    if reference_tol is None:
        reference_tol = 1e-10 if source.dtype == torch.float64 else 1e-6
    return GridTuning(source, smp, paths, calibration, seed, eps, candidates, max_evals, reference_tol,
                      check_device(device))
