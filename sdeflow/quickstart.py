"""The stages of ``sdeflow quickstart`` as library functions (the CLI calls them in order and prints).

1. ``train_digits`` trains a compact class-conditional UNet (VP SDE, eps prediction, DSM loss with sigma^2 weighting,
   the ten digit classes with condition dropout ``P_UNCOND``: the null class makes it the unconditional model too) on
   the 1500 training digits and writes the EMA checkpoint (loadable with ``sdeflow.load``); everything unconditional
   below uses the null class;
2. ``evaluate_bits_per_dim`` evaluates test bits/dim through the probability-flow ODE (rtol = atol = 1e-5, Hutchinson
   divergence with ``PROBES`` Rademacher probes, ``DRAWS`` uniform dequantisation draws per image: the plain average
   and the importance-weighted bound, each with its standard error over test images) next to the exact bits/dim of a
   full-covariance Gaussian fitted to the same dequantised training data (``sdeflow.data.gaussian_bpd``);
3. ``draw_samples`` samples with DDIM, DPM-Solver++(2M) and the adaptive dopri5 PF-ODE solver;
   ``guided_samples`` samples every class with classifier-free guidance (DPM-Solver++(2M), 20 steps, w = 0 and
   ``GUIDANCE``) and measures with a small CNN trained on the training digits (``sdeflow.classifier``) how many show
   their class;
4. ``save_figures`` writes the sample grids and the loss curve; ``build_report`` assembles report.json's content,
   ``write_report`` writes it and ``summary_table`` is the table the CLI prints. The ONNX stage is
   ``sdeflow.export.deployment_report``.

``run_quickstart`` runs them all in order, as ``sdeflow quickstart`` does, and returns a ``QuickstartReport``
(report.json's content, the files written, and the lines the command prints).
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import checkpoint
from .data import Dataset, gaussian_bpd
from .likelihood import BitsPerDimResult, bits_per_dim
from .progress import Progress
from .train import TrainConfig, TrainResult, train

__all__ = [
    "DRAWS", "PROBES", "TOL", "SAMPLERS", "check_out", "train_digits", "BitsPerDimReport", "evaluate_bits_per_dim",
    "draw_samples", "guided_samples", "save_figures", "build_report", "write_report", "summary_table", "UNITS",
    "STAGES", "QuickstartReport", "run_quickstart",
]

# Likelihood settings. Probe noise biases the importance-weighted bound downwards (log-mean-exp of noisy log p), less
# with more probes per draw: 4 probes keep it small at a quarter of the exact divergence's 64 VJPs per evaluation.
DRAWS, PROBES, TOL = 4, 4, 1e-5
# Classifier-free guidance: condition dropout in training and the guidance weight w of the class grid
# (out = out_c + w (out_c - out_u), diffusers' guidance_scale = 1 + w; benchmarks/bench_guidance.py measures w).
P_UNCOND, GUIDANCE, PER_CLASS = 0.2, 2.0, 10

SAMPLERS: tuple[tuple[str, dict[str, Any]], ...] = (  # label, sdeflow.sample keyword arguments
    ("DDIM, 50 steps", {"method": "ddim", "steps": 50}),
    ("DPM-Solver++(2M), 20 steps", {"method": "dpmsolver++", "steps": 20}),
    ("adaptive PF-ODE (dopri5)", {"method": "ode:dopri5", "rtol": 1e-4, "atol": 1e-4}),
)

ProgressFn = Callable[[Progress], None]
# the stages that report progress (``run_quickstart``'s ``progress``) and the unit of their ``done`` / ``total``
UNITS: dict[str, str] = {"train": "step", "bits/dim": "draw"}
STAGES = 5  # 'quickstart' events: data loaded, trained, bits/dim, guided samples, ONNX export


def _std_err(v: Tensor) -> float:
    return float(v.std() / math.sqrt(len(v)))


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` folder that holds an earlier quickstart's results unless ``overwrite``."""
    from ._validate import check_output_dir

    check_output_dir(out / "model", "--out")
    if not overwrite and ((out / "report.json").exists() or (out / "model" / checkpoint.CONFIG_FILE).exists()):
        raise FileExistsError(f"{out} already holds quickstart results; pass --overwrite to replace them or "
                              "--out for another folder.")


def train_digits(
    folder: Path, *, steps: int, batch_size: int, seed: int, overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[TrainResult, checkpoint.Checkpoint]:
    """Stage 1: train the quickstart's UNet on the digits into ``folder``; the result and the loaded checkpoint."""
    config = TrainConfig(
        data="digits", sde="vp", prediction="eps", loss="dsm", weighting="sigma2", steps=steps,
        batch_size=batch_size, lr=2e-3, warmup=50, lr_schedule="cosine", ema_decay=0.999,
        eval_every=max(1, steps // 6), checkpoint_every=steps, seed=seed, conditional=True, p_uncond=P_UNCOND,
    )

    def on_step(event: Progress) -> None:
        if progress is not None:
            progress(Progress("train", event.done, event.total, {"loss": event.info["loss"]}))

    result = train(config, folder, overwrite=overwrite, callback=on_step)
    return result, checkpoint.load(folder)


@dataclass(frozen=True)
class BitsPerDimReport:
    """Stage 2's result: per-image bits/dim of the model (plain and importance-weighted) and of the Gaussian."""

    model: Tensor
    importance: Tensor
    gaussian: Tensor
    gaussian_all: Any  # sdeflow.data.gaussian_bpd on every test image
    likelihood: BitsPerDimResult

    def report(self, seconds: float) -> dict[str, Any]:
        """The ``test_bpd`` section of report.json."""
        lik, diff = self.likelihood, self.model - self.gaussian
        settings = {k: (v if isinstance(v, int | float | str | bool | None) else str(v))
                    for k, v in lik.results[0].settings.items()}
        return {
            "n_images": len(self.model),
            "model": float(self.model.mean()), "model_stderr": _std_err(self.model),
            "model_importance_weighted": float(self.importance.mean()),
            "model_importance_weighted_stderr": _std_err(self.importance),
            "gaussian": float(self.gaussian.mean()), "gaussian_stderr": _std_err(self.gaussian),
            "difference_model_minus_gaussian": float(diff.mean()), "difference_stderr": _std_err(diff),
            "gaussian_all_test_images": self.gaussian_all.bpd,
            "gaussian_all_test_images_stderr": self.gaussian_all.bpd_stderr,
            "likelihood": {"nfe_per_draw": lik.nfe // DRAWS, "nfe": lik.nfe, "status": lik.results[0].status,
                           "seconds": round(seconds, 1), **settings},
            "dequantisation": f"uniform, {DRAWS} draws per image (sdeflow.bits_per_dim); model: the mean of the "
                              "per-draw bpd = -log p_x / (D ln 2) - log2(scale) + log2(K); model_importance_weighted:"
                              " -log2 of the mean of p_x over the draws / D + the same constants",
        }


def evaluate_bits_per_dim(
    ckpt: checkpoint.Checkpoint, train_set: Dataset, test_set: Dataset, n_test: int, seed: int,
    progress: ProgressFn | None = None,
) -> BitsPerDimReport:
    """Stage 2: bits/dim of the first ``n_test`` test images under the model and under the Gaussian.

    ``progress`` gets ``Progress('bits/dim', draws done (fractional), DRAWS)`` after every accepted solver step.
    """
    if n_test < 2:
        raise ValueError(f"n_test must be >= 2 (a standard error needs two images); got {n_test}.")
    if test_set.codes is None or test_set.levels is None:
        raise ValueError(f"test_set must be discrete data (levels and codes); got {test_set.name!r} without them.")
    idx = torch.arange(min(n_test, len(test_set)))
    state = {"draw": 0, "last": 0.0}

    def on_fraction(event: Progress) -> None:  # the fraction of the current draw's solve; it drops as a draw begins
        frac = event.done
        if frac < state["last"]:
            state["draw"] += 1
        state["last"] = frac
        if progress is not None:
            progress(Progress("bits/dim", min(state["draw"] + frac, DRAWS), DRAWS))

    lik = bits_per_dim(
        ckpt.sde, ckpt.score_model, test_set.codes[idx], levels=test_set.levels, scale=test_set.scale,
        offset=test_set.offset, draws=DRAWS, seeds=(seed * 100_003 + idx).tolist(), rtol=TOL, atol=TOL, eps=1e-5,
        divergence="rademacher", probes=PROBES, callback=on_fraction,
    )
    gauss = gaussian_bpd(train_set, test_set)
    return BitsPerDimReport(lik.plain_bpd.double(), lik.importance_bpd.double(), gauss.per_sample[idx], gauss, lik)


def draw_samples(
    ckpt: checkpoint.Checkpoint, n_samples: int, seed: int, test_set: Dataset
) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """Stage 3: ``n_samples`` samples from each of ``SAMPLERS``; the samples by label and one report row each (NFE,
    seconds, status and pixel statistics next to the test set's)."""
    from .sampling import sample

    samples, rows = {}, []
    ref = test_set.x.flatten(1).double()
    for label, kwargs in SAMPLERS:
        res = sample(ckpt.score_model, ckpt.sde, shape=(n_samples, *ckpt.sample_shape), seed=seed, **kwargs)
        samples[label] = res.samples
        flat = res.samples.flatten(1).double()
        rows.append({"sampler": label, **kwargs, "nfe": res.nfe, "seconds": round(res.wall_time, 2),
                     "status": res.status,
                     "pixel_mean": round(float(flat.mean()), 4), "test_pixel_mean": round(float(ref.mean()), 4),
                     "pixel_std": round(float(flat.std()), 4), "test_pixel_std": round(float(ref.std()), 4)})
    return samples, rows


def guided_samples(
    ckpt: checkpoint.Checkpoint, train_set: Dataset, test_set: Dataset, seed: int
) -> tuple[Tensor, dict[str, Any]]:
    """Stage 3b: ``PER_CLASS`` samples of every class at guidance w = 0 and ``GUIDANCE`` (DPM-Solver++(2M), 20 steps),
    labelled by a small CNN trained on the training digits; the guided samples at ``GUIDANCE`` (one row per class)
    and the ``conditional`` section of report.json."""
    from .classifier import accuracy, guided_accuracy, train_classifier

    if test_set.labels is None:
        raise ValueError(f"test_set must carry class labels; {test_set.name!r} has none.")
    t0 = time.perf_counter()
    clf = train_classifier(train_set, seed=seed)
    clf_test = accuracy(clf, test_set.x, test_set.labels)
    guided = guided_accuracy(ckpt.score_model, ckpt.sde, clf, (0.0, GUIDANCE), n_per_class=PER_CLASS, seed=seed,
                             method="dpmsolver++", steps=20)
    return guided.samples[GUIDANCE], {
        "p_uncond": P_UNCOND, "sampler": "dpmsolver++, 20 steps", "samples_per_class": PER_CLASS,
        "guided_accuracy": {str(w): a for w, a in guided.accuracy.items()},
        "nfe": {str(w): v for w, v in guided.nfe.items()},
        "classifier": "small CNN (sdeflow.classifier.train_classifier, 600 Adam steps on the dequantised "
                      "training digits)", "classifier_test_accuracy": clf_test,
        "guidance_convention": "out = out(x|c) + w (out(x|c) - out(x|none)); diffusers guidance_scale = 1 + w; "
                               "one batched call on 2B rows = 1 NFE",
        "seconds": round(time.perf_counter() - t0, 1),
    }


def save_figures(
    out: Path, samples: dict[str, Tensor], test_set: Dataset, result: TrainResult, class_grid: Tensor | None = None
) -> list[Path]:
    """Stage 4: ``out/samples.png`` (one ``image_grid`` panel per sampler, the guided ``class_grid`` with one row per
    class, and one of test digits) and ``out/loss.png`` (training loss per step, its running mean and the EMA test
    loss)."""
    import numpy as np

    from .images import image_grid, new_figure, save_figure

    n = len(next(iter(samples.values())))
    panels: dict[str, tuple[Tensor, int | None]] = {k: (v, None) for k, v in samples.items()}
    if class_grid is not None:
        panels[f"classes 0-9 (rows), guidance w = {GUIDANCE:g}"] = (class_grid, PER_CLASS)
    panels["test data (reference)"] = (test_set.x[:n], None)
    fig = new_figure(4.0 * len(panels), 4.4)
    for ax, (label, (x, cols)) in zip(fig.subplots(1, len(panels)), panels.items(), strict=True):
        pixels = image_grid(x.cpu().numpy(), data_scale=test_set.scale, data_offset=test_set.offset, scale=1, border=1,
                            columns=cols)
        ax.imshow(pixels, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, out / "samples.png")

    loss = np.asarray(result.loss)
    k = max(1, len(loss) // 50)
    fig = new_figure(6, 3.6)
    ax = fig.subplots()
    ax.plot(np.arange(1, len(loss) + 1), loss, color="0.8", lw=0.6, label="training loss (per step)")
    ax.plot(np.arange(k, len(loss) + 1), np.convolve(loss, np.ones(k) / k, mode="valid"), color="C0",
            label=f"training loss ({k}-step mean)")
    if result.test_loss:
        s, v = zip(*result.test_loss, strict=True)
        ax.plot(s, v, "o-", color="C3", label="test loss (EMA weights)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("DSM loss ||eps_hat - eps||^2 per image")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "loss.png")
    return [out / "samples.png", out / "loss.png"]


def build_report(
    out: Path, train_set: Dataset, test_set: Dataset, result: TrainResult, ckpt: checkpoint.Checkpoint,
    test_bpd: dict[str, Any], sampler_rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """report.json's content (without the ONNX section and the total time, which the caller adds)."""
    tail = result.loss[-100:]
    return {
        "command": "sdeflow quickstart",
        "data": {**train_set.info, "n_train": len(train_set), "n_test": len(test_set),
                 "source": "UCI optdigits 8x8 via scikit-learn (CC BY 4.0)"},
        "model": {"checkpoint": str(out / "model"), "parameters": checkpoint.num_parameters(ckpt.net),
                  "config": ckpt.config["model"], "sde": ckpt.config["sde"], "prediction": "eps"},
        "training": {"steps": result.steps, "batch_size": result.config.batch_size,
                     "seconds": round(result.seconds, 1), "final_loss_mean_last_100": sum(tail) / len(tail),
                     "test_loss": result.test_loss},
        "test_bpd": test_bpd,
        "samplers": sampler_rows,
        "platform": {"python": platform.python_version(), "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "machine": platform.machine()},
    }


def write_report(out: Path, report: dict[str, Any]) -> Path:
    """Write ``report`` to ``out/report.json`` atomically (non-finite numbers as null); return the path."""
    from ._utils import atomic_write
    from ._validate import json_safe

    text = json.dumps(json_safe(report), indent=2, allow_nan=False)
    return atomic_write(out / "report.json", lambda p: p.write_text(text))


def summary_table(report: dict[str, Any]) -> str:
    """The table ``sdeflow quickstart`` prints: test bits/dim, then NFE, time and pixel statistics per sampler."""
    b = report["test_bpd"]
    lines = [
        "",
        f"{'test bits/dim (' + str(b['n_images']) + ' images)':<44}{'mean':>8}{'stderr':>9}",
        f"{'  score model, PF-ODE (dopri5, Hutchinson)':<44}{b['model']:>8.3f}{b['model_stderr']:>9.3f}",
        f"{'    importance-weighted over ' + str(DRAWS) + ' draws':<44}{b['model_importance_weighted']:>8.3f}"
        f"{b['model_importance_weighted_stderr']:>9.3f}",
        f"{'  full-covariance Gaussian (exact)':<44}{b['gaussian']:>8.3f}{b['gaussian_stderr']:>9.3f}",
        f"{'  difference (paired)':<44}{b['difference_model_minus_gaussian']:>8.3f}{b['difference_stderr']:>9.3f}",
        "",
        f"{'sampler':<32}{'NFE':>6}{'seconds':>9}{'status':>10}{'pixel mean':>12}{'pixel std':>11}",
    ]
    for row in report["samplers"]:
        lines.append(f"{row['sampler']:<32}{row['nfe']:>6}{row['seconds']:>9.2f}{row['status']:>10}"
                     f"{row['pixel_mean']:>12.3f}{row['pixel_std']:>11.3f}")
    first = report["samplers"][0]
    lines.append(f"{'test data':<32}{'':>6}{'':>9}{'':>10}{first['test_pixel_mean']:>12.3f}"
                 f"{first['test_pixel_std']:>11.3f}")
    c = report.get("conditional")
    if c is not None:
        lines += ["", f"class-conditional samples labelled by a CNN ({c['classifier_test_accuracy']:.1%} on test "
                  "digits): " + ", ".join(f"w = {w}: {a:.1%}" for w, a in c["guided_accuracy"].items())]
    lines.append(f"\ntotal {report['total_seconds']:.0f} s")
    return "\n".join(lines)


@dataclass(frozen=True)
class QuickstartReport:
    """What ``run_quickstart`` did: report.json's content (``report``, written to ``path``), the figures, the
    training result (``training``: the loss history and the exact seconds) and the trained checkpoint."""

    out: Path
    report: dict[str, Any]
    path: Path
    figures: tuple[Path, ...]
    training: TrainResult
    checkpoint: checkpoint.Checkpoint

    def lines(self) -> list[str]:
        """The lines ``sdeflow quickstart`` prints: the data and platform, one line per stage (training, test
        bits/dim, guided samples, the ONNX export and its time to quality), ``summary_table`` and the files. All but
        the last two are also reported while the run goes on (``run_quickstart``'s 'quickstart' events)."""
        r = self.report
        return [_data_line(r["data"]["n_train"], r["data"]["n_test"]), _train_line(r["model"]["parameters"],
                self.training), _bpd_line(r["test_bpd"]), _guided_line(r["conditional"]), *_onnx_lines(r["onnx"]),
                *self.closing_lines()]

    def closing_lines(self) -> list[str]:
        """The summary table and the files written: the lines printed after the stages."""
        files = ", ".join(map(str, self.figures))
        return [summary_table(self.report), f"wrote {self.path}, {files} and the checkpoint {self.out / 'model'}"]


def _data_line(n_train: int, n_test: int) -> str:
    return (f"sdeflow quickstart: 8x8 digits ({n_train} train / {n_test} test images, 17 levels), torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads")


def _train_line(parameters: int, result: TrainResult) -> str:
    return (f"trained {parameters:,}-parameter UNet for {result.steps} steps in {result.seconds:.0f} s; test loss "
            f"{result.test_loss[-1][1]:.3f}")


def _bpd_line(b: Mapping[str, Any]) -> str:
    return (f"test bits/dim on {b['n_images']} images: model {b['model']:.3f} +- {b['model_stderr']:.3f} "
            f"(importance-weighted over {DRAWS} draws {b['model_importance_weighted']:.3f} +- "
            f"{b['model_importance_weighted_stderr']:.3f}), Gaussian {b['gaussian']:.3f} +- {b['gaussian_stderr']:.3f} "
            f"({b['likelihood']['nfe_per_draw']} NFE per draw, {b['likelihood']['seconds']:.0f} s)")


def _guided_line(c: Mapping[str, Any]) -> str:
    return (f"class-conditional samples ({PER_CLASS} per class, DPM-Solver++ 20 steps): classifier accuracy "
            + ", ".join(f"w = {w}: {a:.1%}" for w, a in c["guided_accuracy"].items())
            + f" (the classifier: {c['classifier_test_accuracy']:.1%} on the test digits; {c['seconds']:.0f} s)")


def _onnx_lines(onnx: Mapping[str, Any]) -> list[str]:
    lines = [f"ONNX export {onnx['onnx']} (DDIM {onnx['steps']} steps): max rel. error vs PyTorch "
             f"{max(onnx['parity_rel_error'].values()):.1e}; onnxruntime {onnx['speedup']}x PyTorch at batch "
             f"{onnx['batch']}"]
    ttq = onnx.get("time_to_quality")
    if ttq and "best" in ttq:
        speed = ", ".join(f"{v['speedup']}x at batch {k}" for k, v in ttq["batches"].items())
        lines.append(f"time to DDIM-50's quality: {ttq['best']} with {ttq['best_steps']} steps under onnxruntime "
                     f"is {speed} faster than PyTorch eager DDIM-50")
    return lines


def run_quickstart(
    out: str | Path = "runs/quickstart", *, steps: int = 1200, batch_size: int = 128, n_test: int = 128,
    n_samples: int = 64, seed: int = 0, overwrite: bool = False, progress: ProgressFn | None = None,
    names: Mapping[str, str] | None = None,
) -> QuickstartReport:
    """The whole quickstart, as ``sdeflow quickstart``: ``train_digits`` (``steps`` of batch ``batch_size``) into
    ``out/model``, ``evaluate_bits_per_dim`` on ``n_test`` (>= 2) test images, ``draw_samples`` (``n_samples`` per
    sampler), ``guided_samples``, ``save_figures``, the ONNX stage (``sdeflow.export.deployment_report``:
    out/model.onnx) and ``write_report`` (out/report.json, with the total seconds).

    ``progress`` gets the stages' ``Progress`` events ('train', then 'bits/dim'; their units in ``UNITS``) and, as
    each of the ``STAGES`` stages ends, ``Progress('quickstart', k, STAGES, label=line)`` for each of its lines (the
    lines of ``QuickstartReport.lines``, so a caller can print them as they come). An ``out``
    that holds an earlier run's results is refused unless ``overwrite``. The arguments are checked before anything
    is computed; ``names`` maps argument names to the names errors show (the CLI's flags, e.g. {'n_test':
    '--n-test'}).
    """
    from sdeflow.export import deployment_report

    from ._validate import check_int
    from .data import load_dataset

    name = (names or {}).get
    for arg, value in (("steps", steps), ("batch_size", batch_size), ("n_samples", n_samples)):
        check_int(value, name(arg, arg), min=1)
    check_int(seed, name("seed", "seed"))
    if check_int(n_test, name("n_test", "n_test")) < 2:
        raise ValueError(f"{name('n_test', 'n_test')} must be >= 2 (a standard error needs two images); got {n_test}.")
    out = Path(out)
    check_out(out, overwrite)
    stages = iter(range(1, STAGES + 1))

    def done(*lines: str) -> None:  # a stage is finished: its lines as 'quickstart' events
        k = next(stages)
        if progress is not None:
            for line in lines:
                progress(Progress("quickstart", k, STAGES, label=line))

    t_start = time.perf_counter()
    train_set, test_set = load_dataset("digits"), load_dataset("digits", "test")
    done(_data_line(len(train_set), len(test_set)))
    result, ckpt = train_digits(out / "model", steps=steps, batch_size=batch_size, seed=seed, overwrite=overwrite,
                                progress=progress)
    done(_train_line(checkpoint.num_parameters(ckpt.net), result))
    t0 = time.perf_counter()
    bpd = evaluate_bits_per_dim(ckpt, train_set, test_set, n_test, seed, progress=progress)
    test_bpd = bpd.report(time.perf_counter() - t0)
    done(_bpd_line(test_bpd))
    samples, sampler_rows = draw_samples(ckpt, n_samples, seed, test_set)
    class_grid, conditional = guided_samples(ckpt, train_set, test_set, seed)
    done(_guided_line(conditional))
    figures = save_figures(out, samples, test_set, result, class_grid)
    report = build_report(out, train_set, test_set, result, ckpt, test_bpd, sampler_rows)
    report["conditional"] = conditional
    report["onnx"] = deployment_report(out / "model", out, seed=seed)
    done(*_onnx_lines(report["onnx"]))
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    return QuickstartReport(out, report, write_report(out, report), tuple(figures), result, ckpt)
