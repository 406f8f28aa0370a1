"""``sdeflow quickstart``: the main job, end to end on the built-in 8x8 digits, in a few minutes on a laptop CPU.

1. trains a compact class-conditional UNet (VP SDE, eps prediction, the ten digit classes with condition dropout
   ``P_UNCOND``: the null class makes it the unconditional model too) on the 1500 training digits, EMA weights,
   checkpoint in ``OUT/model`` (loadable with ``sdeflow.load``); everything unconditional below uses the null class;
2. evaluates test bits/dim through the probability-flow ODE (rtol = atol = 1e-5, Hutchinson divergence with
   ``PROBES`` Rademacher probes, ``DRAWS`` uniform dequantisation draws per image: the plain average and the
   importance-weighted bound, each with its standard error over test images) next to the exact bits/dim of a
   full-covariance Gaussian fitted to the same dequantised training data (``sdeflow.data.gaussian_bpd``), on the same
   test images;
3. draws samples with DDIM, DPM-Solver++(2M) and the adaptive dopri5 PF-ODE solver;
4. samples every class with classifier-free guidance (DPM-Solver++(2M), 20 steps, w = 0 and ``GUIDANCE``) and
   measures with a small CNN trained on the training digits (``sdeflow.classifier``) how many show their class;
5. writes ``OUT/report.json``, ``OUT/samples.png`` (a grid per sampler, the guided class grid with one row per
   class, real test digits for reference), ``OUT/loss.png`` and prints a summary table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

# Likelihood settings. Probe noise biases the importance-weighted bound downwards (log-mean-exp of noisy log p), less
# with more probes per draw: 4 probes keep it small at a quarter of the exact divergence's 64 VJPs per evaluation.
DRAWS, PROBES, TOL = 4, 4, 1e-5

# Classifier-free guidance: condition dropout in training and the guidance weight w of the class grid
# (out = out_c + w (out_c - out_u), diffusers' guidance_scale = 1 + w; benchmarks/bench_guidance.py measures w).
P_UNCOND, GUIDANCE, PER_CLASS = 0.2, 2.0, 10

HELP = "Train on the built-in digits, evaluate test bits/dim and sample; write runs/quickstart/ (a few minutes)."

SAMPLERS = (  # label, sdeflow.sample keyword arguments
    ("DDIM, 50 steps", {"method": "ddim", "steps": 50}),
    ("DPM-Solver++(2M), 20 steps", {"method": "dpmsolver++", "steps": 20}),
    ("adaptive PF-ODE (dopri5)", {"method": "ode:dopri5", "rtol": 1e-4, "atol": 1e-4}),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    p.add_argument("--steps", type=int, default=1200, help="training steps (default: 1200)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-test", type=int, default=128, help="test images for bits/dim (default: 128; all: 297)")
    p.add_argument("--n-samples", type=int, default=64, help="samples per sampler (default: 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import checkpoint
    from .._validate import check_output_dir, json_safe
    from ..data import gaussian_bpd, load_dataset
    from ..train import TrainConfig, train

    if args.n_test < 2:
        raise ValueError(f"--n-test must be >= 2 (a standard error needs two images); got {args.n_test}.")
    out = Path(args.out)  # checked by sdeflow.cli.check_common
    check_output_dir(out / "model", "--out")
    if (out / "report.json").exists() or (out / "model" / checkpoint.CONFIG_FILE).exists():
        if not args.overwrite:
            raise FileExistsError(f"{out} already holds quickstart results; pass --overwrite to replace them or "
                                  "--out for another folder.")
    t_start = time.perf_counter()
    train_set, test_set = load_dataset("digits"), load_dataset("digits", "test")
    n_test = min(args.n_test, len(test_set))
    print(f"sdeflow quickstart: 8x8 digits ({len(train_set)} train / {len(test_set)} test images, 17 levels), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    # 1. training -------------------------------------------------------------------------------------------------
    config = TrainConfig(
        data="digits", sde="vp", prediction="eps", loss="dsm", weighting="sigma2", steps=args.steps,
        batch_size=args.batch_size, lr=2e-3, warmup=50, lr_schedule="cosine", ema_decay=0.999,
        eval_every=max(1, args.steps // 6), checkpoint_every=args.steps, seed=args.seed,
        conditional=True, p_uncond=P_UNCOND,
    )
    bar = _bar(args, args.steps, "train")

    def on_step(event) -> None:  # noqa: ANN001
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{event.loss:.3f}", refresh=False)

    result = train(config, out / "model", overwrite=args.overwrite, callback=on_step)
    if bar is not None:
        bar.close()
    ckpt = checkpoint.load(out / "model")
    model, sde = ckpt.score_model, ckpt.sde
    n_params = checkpoint.num_parameters(ckpt.net)
    print(f"trained {n_params:,}-parameter UNet for {args.steps} steps in {result.seconds:.0f} s; "
          f"test loss {result.test_loss[-1][1]:.3f}")

    # 2. test bits/dim: model vs Gaussian ----------------------------------------------------------------------------
    t0 = time.perf_counter()
    gauss = gaussian_bpd(train_set, test_set)
    idx = torch.arange(n_test)
    lik = _bits_per_dim(model, sde, test_set, idx, args)
    model_bpd = lik.plain_bpd.double()
    iw_bpd = lik.importance_bpd.double()
    gauss_bpd = gauss.per_sample[idx]
    diff = model_bpd - gauss_bpd
    se = lambda v: float(v.std() / math.sqrt(len(v)))  # noqa: E731
    bpd_seconds = time.perf_counter() - t0
    print(f"test bits/dim on {n_test} images: model {model_bpd.mean():.3f} +- {se(model_bpd):.3f} "
          f"(importance-weighted over {DRAWS} draws {iw_bpd.mean():.3f} +- {se(iw_bpd):.3f}), "
          f"Gaussian {gauss_bpd.mean():.3f} +- {se(gauss_bpd):.3f} ({lik.nfe // DRAWS} NFE per draw, "
          f"{bpd_seconds:.0f} s)")

    # 3. samples ---------------------------------------------------------------------------------------------------
    from ..sampling import sample

    samples, sampler_rows = {}, []
    for label, kwargs in SAMPLERS:
        res = sample(model, sde, shape=(args.n_samples, *ckpt.sample_shape), seed=args.seed, **kwargs)
        samples[label] = res.samples
        sampler_rows.append({"sampler": label, **{k: v for k, v in kwargs.items()}, "nfe": res.nfe,
                             "seconds": round(res.wall_time, 2), "status": res.status,
                             **_sample_stats(res.samples, test_set)})

    # 4. class-conditional samples with guidance, labelled by a classifier ------------------------------------------
    from ..classifier import accuracy, guided_accuracy, train_classifier

    t0 = time.perf_counter()
    clf = train_classifier(train_set, seed=args.seed)
    clf_test = accuracy(clf, test_set.x, test_set.labels)
    guided = guided_accuracy(model, sde, clf, (0.0, GUIDANCE), n_per_class=PER_CLASS, seed=args.seed,
                             method="dpmsolver++", steps=20)
    cond_seconds = time.perf_counter() - t0
    print(f"class-conditional samples ({PER_CLASS} per class, DPM-Solver++ 20 steps): classifier accuracy "
          + ", ".join(f"w = {w:g}: {a:.1%}" for w, a in guided.accuracy.items())
          + f" (the classifier: {clf_test:.1%} on the test digits; {cond_seconds:.0f} s)")

    # 5. outputs ---------------------------------------------------------------------------------------------------
    from .._utils import atomic_write

    class_panel = (f"classes 0-9 (rows), guidance w = {GUIDANCE:g}", guided.samples[GUIDANCE], PER_CLASS)
    _plot_samples(out / "samples.png", samples, test_set, args.n_samples, class_panel)
    _plot_loss(out / "loss.png", result)
    report = {
        "command": "sdeflow quickstart",
        "data": {**train_set.info, "n_train": len(train_set), "n_test": len(test_set),
                 "source": "UCI optdigits 8x8 via scikit-learn (CC BY 4.0)"},
        "model": {"checkpoint": str(out / "model"), "parameters": n_params, "config": ckpt.config["model"],
                  "sde": ckpt.config["sde"], "prediction": "eps"},
        "training": {"steps": args.steps, "batch_size": args.batch_size, "seconds": round(result.seconds, 1),
                     "final_loss_mean_last_100": sum(result.loss[-100:]) / len(result.loss[-100:]),
                     "test_loss": result.test_loss},
        "test_bpd": {
            "n_images": n_test,
            "model": float(model_bpd.mean()), "model_stderr": se(model_bpd),
            "model_importance_weighted": float(iw_bpd.mean()), "model_importance_weighted_stderr": se(iw_bpd),
            "gaussian": float(gauss_bpd.mean()), "gaussian_stderr": se(gauss_bpd),
            "difference_model_minus_gaussian": float(diff.mean()), "difference_stderr": se(diff),
            "gaussian_all_test_images": gauss.bpd, "gaussian_all_test_images_stderr": gauss.bpd_stderr,
            "likelihood": {"nfe_per_draw": lik.nfe // DRAWS, "nfe": lik.nfe, "status": lik.results[0].status,
                           "seconds": round(bpd_seconds, 1),
                           **{k: (str(v) if not isinstance(v, int | float | str | bool | None) else v)
                              for k, v in lik.results[0].settings.items()}},
            "dequantisation": f"uniform, {DRAWS} draws per image (sdeflow.bits_per_dim); model: the mean of the "
                              "per-draw bpd = -log p_x / (D ln 2) - log2(scale) + log2(K); model_importance_weighted:"
                              " -log2 of the mean of p_x over the draws / D + the same constants",
        },
        "samplers": sampler_rows,
        "conditional": {
            "p_uncond": P_UNCOND, "sampler": "dpmsolver++, 20 steps", "samples_per_class": PER_CLASS,
            "guided_accuracy": {str(w): a for w, a in guided.accuracy.items()},
            "nfe": {str(w): v for w, v in guided.nfe.items()},
            "classifier": "small CNN (sdeflow.classifier.train_classifier, 600 Adam steps on the dequantised "
                          "training digits)", "classifier_test_accuracy": clf_test,
            "guidance_convention": "out = out(x|c) + w (out(x|c) - out(x|none)); diffusers guidance_scale = 1 + w; "
                                   "one batched call on 2B rows = 1 NFE",
            "seconds": round(cond_seconds, 1),
        },
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "platform": {"python": platform.python_version(), "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "machine": platform.machine()},
    }
    from ..export import quickstart_export  # 5. ONNX export of DDIM, run under onnxruntime (issue 6)

    report["onnx"] = onnx_report = quickstart_export(out / "model", out, seed=args.seed)
    print(f"ONNX export {onnx_report['onnx']} (DDIM {onnx_report['steps']} steps): max rel. error vs PyTorch "
          f"{max(onnx_report['parity_rel_error'].values()):.1e}; onnxruntime {onnx_report['speedup']}x "
          f"PyTorch at batch {onnx_report['batch']}")
    ttq = onnx_report.get("time_to_quality")
    if ttq and "best" in ttq:
        speed = ", ".join(f"{v['speedup']}x at batch {b}" for b, v in ttq["batches"].items())
        print(f"time to DDIM-50's quality: {ttq['best']} with {ttq['best_steps']} steps under onnxruntime is {speed} "
              "faster than PyTorch eager DDIM-50")
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write(out / "report.json", lambda p: p.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False)))
    _print_table(report)
    print(f"wrote {out / 'report.json'}, {out / 'samples.png'}, {out / 'loss.png'} and the checkpoint {out / 'model'}")
    return 0


def _bar(args: argparse.Namespace, total: int, desc: str):  # noqa: ANN202
    if args.no_progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False)


def _bits_per_dim(model, sde, test_set, idx, args):  # noqa: ANN001, ANN202
    from ..likelihood import bits_per_dim

    bar = _bar(args, 100 * DRAWS, "bits/dim")
    state = {"draw": 0, "last": 0.0, "shown": 0}

    def on_progress(frac: float) -> None:  # the fraction of the current draw's solve; it drops when a draw begins
        if bar is not None:
            if frac < state["last"]:
                state["draw"] += 1
            state["last"] = frac
            target = int(100 * (state["draw"] + frac))
            bar.update(max(0, target - state["shown"]))
            state["shown"] = max(state["shown"], target)

    res = bits_per_dim(
        sde, model, test_set.codes[idx], levels=test_set.levels, scale=test_set.scale, offset=test_set.offset,
        draws=DRAWS, seeds=(args.seed * 100_003 + idx).tolist(), rtol=TOL, atol=TOL, eps=1e-5,
        divergence="rademacher", probes=PROBES, callback=on_progress,
    )
    if bar is not None:
        bar.close()
    return res


def _sample_stats(x, test_set) -> dict:  # noqa: ANN001
    """Pixel statistics of samples next to the test set's (in model space)."""
    flat, ref = x.flatten(1).double(), test_set.x.flatten(1).double()
    return {
        "pixel_mean": round(float(flat.mean()), 4), "test_pixel_mean": round(float(ref.mean()), 4),
        "pixel_std": round(float(flat.std()), 4), "test_pixel_std": round(float(ref.std()), 4),
    }


def _plot_samples(path: Path, samples: dict, test_set, n: int, classes: tuple | None = None) -> None:  # noqa: ANN001
    """One panel per sampler, the class grid ``classes`` = (title, images, columns: one row per class) and one of
    test digits, each an ``image_grid`` of its first ``n`` images."""
    from ..images import image_grid, new_figure, save_figure

    panels = {k: (v, None) for k, v in samples.items()}
    if classes is not None:
        panels[classes[0]] = (classes[1], classes[2])
    panels["test data (reference)"] = (test_set.x[:n], None)
    fig = new_figure(4.0 * len(panels), 4.4)
    for ax, (label, (x, cols)) in zip(fig.subplots(1, len(panels)), panels.items(), strict=True):
        x = x if cols is not None else x[:n]
        pixels = image_grid(x.cpu().numpy(), data_scale=test_set.scale, data_offset=test_set.offset, scale=1, border=1,
                            columns=cols)
        ax.imshow(pixels, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def _plot_loss(path: Path, result) -> None:  # noqa: ANN001
    import numpy as np

    from ..images import new_figure, save_figure

    loss = np.asarray(result.loss)
    k = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig = new_figure(6, 3.6)
    ax = fig.subplots()
    ax.plot(np.arange(1, len(loss) + 1), loss, color="0.8", lw=0.6, label="training loss (per step)")
    ax.plot(np.arange(k, len(loss) + 1), smooth, color="C0", label=f"training loss ({k}-step mean)")
    if result.test_loss:
        s, v = zip(*result.test_loss, strict=True)
        ax.plot(s, v, "o-", color="C3", label="test loss (EMA weights)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("DSM loss ||eps_hat - eps||^2 per image")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _print_table(report: dict) -> None:
    b = report["test_bpd"]
    print()
    print(f"{'test bits/dim (' + str(b['n_images']) + ' images)':<44}{'mean':>8}{'stderr':>9}")
    print(f"{'  score model, PF-ODE (dopri5, Hutchinson)':<44}{b['model']:>8.3f}{b['model_stderr']:>9.3f}")
    print(f"{'    importance-weighted over ' + str(DRAWS) + ' draws':<44}{b['model_importance_weighted']:>8.3f}"
          f"{b['model_importance_weighted_stderr']:>9.3f}")
    print(f"{'  full-covariance Gaussian (exact)':<44}{b['gaussian']:>8.3f}{b['gaussian_stderr']:>9.3f}")
    print(f"{'  difference (paired)':<44}{b['difference_model_minus_gaussian']:>8.3f}{b['difference_stderr']:>9.3f}")
    print()
    print(f"{'sampler':<32}{'NFE':>6}{'seconds':>9}{'status':>10}{'pixel mean':>12}{'pixel std':>11}")
    for row in report["samplers"]:
        print(f"{row['sampler']:<32}{row['nfe']:>6}{row['seconds']:>9.2f}{row['status']:>10}"
              f"{row['pixel_mean']:>12.3f}{row['pixel_std']:>11.3f}")
    first = report["samplers"][0]
    print(f"{'test data':<32}{'':>6}{'':>9}{'':>10}{first['test_pixel_mean']:>12.3f}{first['test_pixel_std']:>11.3f}")
    c = report["conditional"]
    print()
    print(f"class-conditional samples labelled by a CNN ({c['classifier_test_accuracy']:.1%} on test digits): "
          + ", ".join(f"w = {w}: {a:.1%}" for w, a in c["guided_accuracy"].items()))
    print(f"\ntotal {report['total_seconds']:.0f} s")
