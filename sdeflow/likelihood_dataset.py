"""Exact likelihoods of a whole data set, on one process or many (the library behind ``sdeflow likelihood``).

``evaluate_dataset`` cuts the first ``limit`` examples into fixed batches of ``batch_size`` in index order, deals
them round-robin to the ranks of a ``DistContext`` (``sdeflow.distributed``), computes each batch with
``bits_per_dim`` (discrete data) or ``log_likelihood`` (continuous data) and gathers the rows on every rank, so the
per-example results equal those of a single-process run with the same ``batch_size``. Probes and dequantisation
noise are seeded per example from (seed, index). ``DatasetLikelihood.write(out_dir)`` writes the CSV, the summary
and the plots atomically; ``checkpoint_dataset`` loads the data a checkpoint was trained on and refuses data whose
shape or scaling differ from the network's. ``evaluate_to_folder`` is the whole of ``sdeflow likelihood``: it joins
the torchrun process group, evaluates a ``sdeflow.sources.LikelihoodSource`` and writes the files on rank 0.

CSV columns: index, bpd and bpd_std_err (discrete data: the ``bound`` chosen, the mean over ``draws`` by default,
and its standard error), plain_bpd, plain_bpd_std_err, importance_bpd and importance_std_err (both bounds, always),
or log_p_std_err (continuous data), log_p (nats, mean over draws), nats_per_dim, prior_logp and delta_logp (first
draw), nfe and n_steps (per draw), batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import distributed as D
from ._utils import atomic_write
from ._validate import json_safe
from .checkpoint import Checkpoint
from .data import Dataset, load_dataset
from .likelihood import BOUNDS, LikelihoodError, bits_per_dim, log_likelihood, per_class
from .parametrization import ScoreModel
from .progress import Progress
from .sde import SDE

if TYPE_CHECKING:
    from .sources import LikelihoodSource

__all__ = ["DatasetLikelihood", "evaluate_dataset", "checkpoint_dataset", "check_conditional", "LikelihoodFiles",
           "evaluate_to_folder"]

Row = dict[str, float | int]


def checkpoint_dataset(
    ckpt: Checkpoint,
    data: str | None = None,
    split: str | None = None,
    *,
    levels: int | None = None,
    scale: float | None = None,
    offset: float | None = None,
) -> Dataset:
    """The data set to evaluate ``ckpt`` on: ``data`` (a built-in name or a .npy/.npz path; default the checkpoint's
    own data set) in ``split`` (default 'test' for a built-in data set, 'train' for a file).

    Raises ``ValueError`` when the samples' shape or the data scaling (levels, scale, offset) differ from those the
    network was trained with: its likelihood of other data would be meaningless.
    """
    from .data import DATASETS

    name = data or ckpt.data_info.get("name")
    if not name:
        raise ValueError("The checkpoint does not name its data set; pass data= (CLI: --data).")
    dataset = load_dataset(name, split or ("test" if name in DATASETS else "train"), levels=levels, scale=scale,
                           offset=offset)
    if tuple(dataset.sample_shape) != tuple(ckpt.sample_shape):
        raise ValueError(
            f"The data {name!r} has samples of shape {tuple(dataset.sample_shape)} but the checkpoint's network was "
            f"trained on shape {tuple(ckpt.sample_shape)}; pass the matching data= (CLI: --data)."
        )
    info = ckpt.data_info
    if (dataset.levels, dataset.scale, dataset.offset) != (info.get("levels"), info.get("scale"), info.get("offset")):
        raise ValueError(
            f"The data scaling (levels={dataset.levels}, scale={dataset.scale}, offset={dataset.offset}) differs from "
            f"the one the network was trained with (levels={info.get('levels')}, scale={info.get('scale')}, "
            f"offset={info.get('offset')}); pass matching levels=/scale=/offset= (CLI: --levels/--scale/--offset)."
        )
    return dataset


def check_conditional(model: Any, data: Dataset) -> None:
    """A conditional evaluation needs a class-conditional model and labelled data whose labels the model knows."""
    k = getattr(model, "num_classes", None)
    if k is None:
        raise ValueError("conditional=True (CLI: --conditional) needs a class-conditional model; this one is "
                         "unconditional (train with conditional=True / --conditional).")
    if data.labels is None:
        raise ValueError(f"conditional=True (CLI: --conditional) needs class labels, but the data {data.name!r} has "
                         "none (use an .npz with 'labels' or 'test_labels').")
    if int(data.labels.max()) >= k:
        raise ValueError(f"The labels of {data.name!r} reach {int(data.labels.max())}, but the model has {k} classes "
                         f"(0..{k - 1}).")


@dataclass(frozen=True)
class DatasetLikelihood:
    """Result of ``evaluate_dataset``: one row per example in index order, and the summary.

    Attributes:
        rows: per-example columns (see the module docstring), sorted by index.
        summary: mean and standard error of bits/dim (discrete data) or nats/dim, the mean log p, both bounds' means
            (discrete data), NFE mean and max per batch, the data, the model description and the settings.
        data: the data set evaluated (``values`` index its examples by ``rows[i]['index']``).
    """

    rows: list[Row]
    summary: dict[str, Any]
    data: Dataset = field(repr=False)

    @property
    def discrete(self) -> bool:
        return self.data.levels is not None

    @property
    def key(self) -> str:
        """'bpd' for discrete data, 'nats_per_dim' for continuous data: the column the summary averages."""
        return "bpd" if self.discrete else "nats_per_dim"

    @property
    def values(self) -> Tensor:
        """[N] float64, the ``key`` column."""
        return torch.tensor([r[self.key] for r in self.rows], dtype=torch.float64)

    def lines(self) -> list[str]:
        """A summary in a few lines (what ``sdeflow likelihood`` prints): the mean of ``key`` with its standard error
        and the NFE per batch; with more than one dequantisation draw both bounds' means; for a conditional
        evaluation the mean per class."""
        s, key = self.summary, self.key
        lines = [f"{key}: {s[f'mean_{key}']:.4f} +- {s[f'{key}_std_err']:.4f} over {len(self.rows)} examples, "
                 f"NFE mean {s['nfe_mean']:.0f} max {s['nfe_max']:.0f}"]
        draws = s["settings"]["draws"]
        if self.discrete and draws > 1:
            lines.append(f"bits/dim over {draws} draws: plain {s['mean_plain_bpd']:.4f}, importance-weighted "
                         f"{s['mean_importance_bpd']:.4f} (reported as bpd: {s['settings']['bound']})")
        if s.get("conditional"):
            per = s[f"per_class_{key}"]
            lines.append(f"conditional {key} per class: " + ", ".join(f"{c}: {v['mean']:.3f}" for c, v in per.items()))
        return lines

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``out_dir``/likelihood.csv, summary.json, likelihood.png and, for images, best_worst.png (each
        atomically); return the paths written."""
        from .images import is_image_shape, save_likelihood_plots

        out = Path(out_dir)
        fields = list(self.rows[0])

        def write_csv(path: Path) -> None:
            with path.open("w") as fh:
                fh.write(",".join(fields) + "\n")
                for r in self.rows:
                    fh.write(",".join(repr(r[f]) if isinstance(r[f], float) else str(r[f]) for f in fields) + "\n")

        atomic_write(out / "likelihood.csv", write_csv)
        text = json.dumps(json_safe(self.summary), indent=2, allow_nan=False)
        atomic_write(out / "summary.json", lambda p: p.write_text(text))
        shape = tuple(self.data.sample_shape)
        index = torch.tensor([int(r["index"]) for r in self.rows])
        images = self.data.x[index] if is_image_shape(shape) else None
        unit = "bits/dim" if self.discrete else "nats/dim"
        plots = save_likelihood_plots(out, self.values, unit=unit, images=images, data=self.data)
        return [out / "likelihood.csv", out / "summary.json", *plots]


def evaluate_dataset(
    sde: SDE,
    model: ScoreModel | Callable[[Tensor, Tensor], Tensor],
    data: Dataset,
    *,
    limit: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    draws: int = 1,
    bound: str = "plain",
    ctx: D.DistContext | None = None,
    progress: Callable[[Progress], None] | None = None,
    description: str = "",
    split: str | None = None,
    conditional: bool = False,
    class_prior: Callable[[Tensor], Callable[[Tensor], Tensor]] | None = None,
    **solver: Any,
) -> DatasetLikelihood:
    """Exact log-likelihoods (continuous data) or bits/dim (discrete data) of the first ``limit`` examples of
    ``data`` (all by default).

    Args:
        sde, model: the SDE and the score model (as for ``log_likelihood``).
        data: a ``Dataset``; ``data.levels`` set means discrete data and ``bits_per_dim`` with ``draws`` uniform
            dequantisation draws and the ``bound`` ('plain' or 'importance') reported as ``bpd``.
        limit, batch_size: how many examples, in fixed batches of ``batch_size`` in index order.
        seed: per-example seeds are ``seed * 2**32 + index``.
        ctx: the process group (``sdeflow.distributed.init_from_env()``); None is a single process on the data's
            device. Every rank gets the gathered result.
        progress: called on this rank with a ``Progress('likelihood', done, total)`` after every batch, in examples.
        description, split: the model's description and the data split, recorded in the summary.
        conditional: log p(x | c) of every example under its own label (``data.labels``; the model must be
            class-conditional): rows get a ``label`` column, the summary the per-class means (``per_class_<key>``).
        class_prior: with ``conditional``, the prior log-density for given labels (e.g.
            ``lambda c: mixture.prior_logp(sde, labels=c)``); None uses ``prior_logp`` or the SDE's p_T.
        **solver: the solver settings of ``log_likelihood`` (method, rtol, atol, eps, divergence, probes, dtype,
            state_dtype, time_variable, max_steps, prior_logp, error_control).

    Raises:
        ValueError: ``limit`` / ``batch_size`` / ``draws`` < 1, or an unknown ``bound``.
        LikelihoodError: a batch failed on some rank (the message is that rank's error); raised on every rank.
    """
    for name, value in (("batch_size", batch_size), ("draws", draws)) + ((("limit", limit),) if limit else ()):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}; got {bound!r}.")
    if conditional:
        check_conditional(model, data)
    ctx = ctx or D.DistContext(rank=0, world_size=1, device=data.x.device)
    n = len(data) if limit is None else min(limit, len(data))
    mine = D.shard(math.ceil(n / batch_size), ctx)
    total = sum(min(n, (b + 1) * batch_size) - b * batch_size for b in mine)
    rows: list[Row] | str = []
    try:
        done = 0
        for b in mine:
            idx = torch.arange(b * batch_size, min(n, (b + 1) * batch_size))
            kwargs = dict(solver)
            if conditional:  # log p(x | c): every example under its own label
                labels = data.labels[idx]  # type: ignore[index]  (checked by check_conditional)
                kwargs["cond"] = labels.to(ctx.device)
                if class_prior is not None:
                    kwargs["prior_logp"] = class_prior(labels)
            rows += _batch_rows(sde, model, data, idx, b, seed * (1 << 32) + idx, draws, bound, ctx.device, kwargs,
                                conditional)
            done += len(idx)
            if progress is not None:
                progress(Progress("likelihood", done, total))
    except (ValueError, TypeError, LikelihoodError) as err:  # gathered, so that every rank raises
        rows = " ".join((str(err) if isinstance(err, LikelihoodError) else f"{type(err).__name__}: {err}").split())
    gathered = D.gather_objects(rows, ctx)
    failures = [part for part in gathered if isinstance(part, str)]
    if failures:
        raise LikelihoodError(failures[0])
    rows = sorted((r for part in gathered for r in part), key=lambda r: r["index"])  # type: ignore[union-attr]
    summary = _summary(rows, data, split, n, description, solver, draws, bound, batch_size, seed, ctx)
    if conditional:
        key = "bpd" if data.levels is not None else "nats_per_dim"
        values = torch.tensor([r[key] for r in rows], dtype=torch.float64)
        summary["conditional"] = True
        summary[f"per_class_{key}"] = per_class(values, torch.tensor([int(r["label"]) for r in rows]))
    return DatasetLikelihood(rows, summary, data)


@dataclass(frozen=True)
class LikelihoodFiles:
    """The result of ``evaluate_to_folder`` on rank 0: the evaluation and the files written."""

    result: DatasetLikelihood
    paths: tuple[Path, ...]

    def lines(self) -> list[str]:
        """``DatasetLikelihood.lines`` and the files written."""
        return [*self.result.lines(), f"wrote {', '.join(str(p) for p in self.paths)}"]


def evaluate_to_folder(
    source: LikelihoodSource,
    out: str | Path,
    *,
    device: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    **options: Any,
) -> LikelihoodFiles | None:
    """Evaluate ``source`` (``sdeflow.sources.likelihood_source``) with ``evaluate_dataset`` on this process's share
    of the batches and write ``out``/likelihood.csv, summary.json and the plots on rank 0 (``DatasetLikelihood.write``).

    ``device``: as ``sdeflow.distributed.init_from_env`` (None: cuda:LOCAL_RANK when available, else the CPU);
    ``options``: those of ``evaluate_dataset`` (limit, batch_size, seed, draws, bound, split, conditional) and the
    solver settings of ``log_likelihood``, recorded in the summary in the order given; with ``dtype=torch.float64``
    the network itself is converted to float64. Returns None on the other torchrun processes.
    """
    net = getattr(source.model, "net", None)
    if options.get("dtype") == torch.float64 and isinstance(net, torch.nn.Module):
        net.double()  # the network computes in the solver's dtype
    ctx = D.init_from_env(device)
    try:
        source.model.to(ctx.device)
        result = evaluate_dataset(
            source.sde, source.model, source.data, ctx=ctx, progress=progress, description=source.description,
            class_prior=source.class_prior, prior_logp=source.prior_logp, **options,
        )
    finally:
        D.shutdown()
    if not ctx.is_main:
        return None
    return LikelihoodFiles(result, tuple(result.write(out)))


def _batch_rows(
    sde: SDE, model: Any, data: Dataset, idx: Tensor, batch: int, seeds: Tensor, draws: int, bound: str,
    device: torch.device, solver: dict[str, Any], conditional: bool = False,
) -> list[Row]:
    x = data.x[idx].to(device)
    if data.levels is not None:
        res = bits_per_dim(sde, model, x, levels=data.levels, scale=data.scale, offset=data.offset, draws=draws,
                           bound=bound, seeds=seeds, **solver)
        lik = res.results[0]
        cols = {"bpd": res.bpd, "bpd_std_err": res.std_err, "plain_bpd": res.plain_bpd,
                "plain_bpd_std_err": res.plain_std_err, "importance_bpd": res.importance_bpd,
                "importance_bpd_std_err": res.importance_std_err, "log_p": res.log_p}
        nfe, steps = res.nfe / draws, sum(r.n_steps for r in res.results) / draws
    else:
        lik = log_likelihood(sde, model, x, seeds=seeds, **solver)
        cols = {"log_p": lik.log_p, "log_p_std_err": lik.std_err}
        nfe, steps = lik.nfe, lik.n_steps
    rows: list[Row] = []
    for j, i in enumerate(idx.tolist()):
        row: Row = {"index": i}
        if conditional and data.labels is not None:
            row["label"] = int(data.labels[i])
        row.update({k: float(v[j]) for k, v in cols.items()})
        row.update(nats_per_dim=-row["log_p"] / data.dim, prior_logp=float(lik.prior_logp[j]),
                   delta_logp=float(lik.delta_logp[j]), nfe=nfe, n_steps=steps, batch=batch)
        rows.append(row)
    return rows


def _summary(
    rows: list[Row], data: Dataset, split: str | None, n: int, description: str, solver: dict[str, Any], draws: int,
    bound: str, batch_size: int, seed: int, ctx: D.DistContext,
) -> dict[str, Any]:
    discrete = data.levels is not None
    key = "bpd" if discrete else "nats_per_dim"
    vals = torch.tensor([r[key] for r in rows], dtype=torch.float64)
    batch_nfe = {r["batch"]: r["nfe"] for r in rows}
    means = {f"mean_{b}_bpd": sum(r[f"{b}_bpd"] for r in rows) / len(rows) for b in BOUNDS} if discrete else {}
    settings = {k: (str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else v)
                for k, v in solver.items() if k != "prior_logp"}
    return {
        "model": description,
        "data": {"name": data.name, "split": split, "n": n, "levels": data.levels, "scale": data.scale,
                 "offset": data.offset, "sample_shape": list(data.sample_shape)},
        f"mean_{key}": float(vals.mean()),
        f"{key}_std_err": float(vals.std() / math.sqrt(len(vals))) if len(vals) > 1 else float("nan"),
        "mean_log_p": float(sum(r["log_p"] for r in rows) / len(rows)),
        **means,
        "nfe_mean": sum(batch_nfe.values()) / len(batch_nfe),
        "nfe_max": max(batch_nfe.values()),
        "settings": {**settings, "draws": draws if discrete else None, "bound": bound if discrete else None,
                     "batch_size": batch_size, "seed": seed, "world_size": ctx.world_size,
                     "prior": "sde" if solver.get("prior_logp") is None else "prior_logp"},
        "status": "success",
    }
