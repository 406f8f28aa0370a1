"""``sdeflow likelihood``: exact log-likelihoods / bits per dimension of a data set through the probability-flow ODE.

Single process:   sdeflow likelihood --checkpoint runs/quickstart/model --data digits --split test --out OUT
Many processes:   torchrun --nproc_per_node=N -m sdeflow likelihood ...   (gloo on CPU, NCCL on GPU)
The data set is cut into fixed batches in index order, dealt round-robin to the ranks and gathered on rank 0, so the
per-example results equal those of a single-process run with the same --batch-size. Probes and dequantisation noise
are seeded per example (seed, index). Rank 0 writes OUT/likelihood.csv, OUT/summary.json, OUT/likelihood.png (the
per-example histogram with the mean and its standard error) and, for images, OUT/best_worst.png, atomically.

CSV columns: index, bpd and bpd_std_err (discrete data: the --bound chosen, by default the mean over --draws, and its
standard error), plain_bpd, plain_bpd_std_err, importance_bpd and importance_bpd_std_err (both bounds, always), or
log_p_std_err (continuous data), log_p (nats, mean over draws), nats_per_dim, prior_logp and delta_logp (first
draw), nfe and n_steps (per draw), batch.
"""

from __future__ import annotations

import argparse

HELP = "Exact log-likelihoods and bits/dim of a data set through the probability-flow ODE (torchrun-ready)."

_SDES = {"vp": "VPSDE", "subvp": "SubVPSDE", "ve": "VESDE"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model and data")
    src.add_argument("--checkpoint", help="checkpoint folder written by `sdeflow train` (model, SDE, data scaling)")
    src.add_argument(
        "--oracle", action="store_true",
        help="use the exact score of a Gaussian-mixture oracle instead of a network (for checks): "
        "GaussianMixture.random(--oracle-dim, --oracle-components, seed --oracle-seed), or with --data gmm the "
        "mixture behind that data set",
    )
    src.add_argument(
        "--conditional", action="store_true",
        help="class-conditional model: log p(x | c) of each example under its own label (the data's labels; the "
        "oracle's components), with bits/dim per class in summary.json",
    )
    src.add_argument("--oracle-dim", type=int, default=2, help="oracle dimension D (default 2)")
    src.add_argument("--oracle-components", type=int, default=4)
    src.add_argument("--oracle-seed", type=int, default=0)
    src.add_argument("--sde", choices=sorted(_SDES), default="vp", help="SDE of the oracle (default vp)")
    src.add_argument(
        "--prior", choices=["sde", "oracle"], default="sde",
        help="prior log-density: the SDE's p_T (default) or, with --oracle, the oracle's exact p_T",
    )
    src.add_argument(
        "--data", help="built-in data set name or a .npy/.npz path (default: the checkpoint's data; with --oracle "
        "and no --data, --limit samples drawn from the oracle)",
    )
    src.add_argument(
        "--split", help="data split (default: 'test' for built-in data sets, 'train' for a .npy/.npz file)"
    )
    src.add_argument("--levels", type=int, help="K levels per dimension of a user array of integers (discrete data)")
    src.add_argument("--scale", type=float, help="model x = scale * y + offset for a user array")
    src.add_argument("--offset", type=float)
    src.add_argument("--limit", type=int, help="use the first N examples only")
    ode = p.add_argument_group("solver")
    ode.add_argument("--method", default="dopri5")
    ode.add_argument("--rtol", type=float, default=1e-5)
    ode.add_argument("--atol", type=float, default=1e-5)
    ode.add_argument("--eps", type=float, default=1e-5)
    ode.add_argument("--divergence", choices=["exact", "rademacher", "gaussian"], default="exact")
    ode.add_argument("--probes", type=int, default=1, help="Hutchinson probes per example")
    ode.add_argument("--draws", type=int, default=1, help="dequantisation draws K per example (discrete data)")
    ode.add_argument(
        "--bound", choices=["plain", "importance"], default="plain",
        help="bits/dim reported as 'bpd': the mean over the K draws (plain, default) or the importance-weighted "
        "bound -log2 mean_j p(y_j) / D (tighter for K > 1); both are written either way",
    )
    ode.add_argument(
        "--error-control", choices=["all", "log_p"], default="all",
        help="step-size control on x and the log-density alike (all, default) or on the log-density with x held 10x "
        "looser (log_p: fewer evaluations at a tolerance, not at an accuracy)",
    )
    ode.add_argument("--time-variable", choices=["t", "sigma_ratio", "log_snr"], default="t")
    ode.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="the network's dtype")
    ode.add_argument(
        "--state-dtype", choices=["float64", "float32"], default="float64",
        help="dtype of the ODE state (x, log-density) (default float64; the network keeps --dtype)",
    )
    ode.add_argument("--max-steps", type=int, default=10_000)
    run_g = p.add_argument_group("run")
    run_g.add_argument("--batch-size", type=int, default=64)
    run_g.add_argument("--seed", type=int, default=0, help="per-example seeds are derived from (seed, index)")
    run_g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if available, else cpu)")
    run_g.add_argument("--out", default="runs/likelihood", help="output folder (default runs/likelihood)")
    run_g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _source(args: argparse.Namespace):  # noqa: ANN202 - returns (sde, score, dataset-like, prior, description)
    import torch

    from .. import VESDE, VPSDE, GaussianMixture, SubVPSDE
    from ..data import load_dataset

    if bool(args.checkpoint) == bool(args.oracle):
        raise ValueError("Pass exactly one model: --checkpoint PATH (a trained network) or --oracle.")
    if args.prior == "oracle" and not args.oracle:
        raise ValueError("--prior oracle needs --oracle (only an oracle has an exact p_T).")
    from ..data import DATASETS

    user = {k: getattr(args, k) for k in ("levels", "scale", "offset") if getattr(args, k) is not None}

    def split_for(name: str) -> str:  # resolves the default and records it for the summary
        args.split = args.split or ("test" if name in DATASETS else "train")
        return args.split

    if args.checkpoint:
        from ..checkpoint import load

        ckpt = load(args.checkpoint)
        name = args.data or ckpt.data_info.get("name")
        if not name:
            raise ValueError("The checkpoint does not name its data set; pass --data.")
        data = load_dataset(name, split_for(name), **user)
        if tuple(data.sample_shape) != tuple(ckpt.sample_shape):
            raise ValueError(
                f"The data {name!r} has samples of shape {tuple(data.sample_shape)} but the checkpoint's network was "
                f"trained on shape {tuple(ckpt.sample_shape)}; pass the matching --data."
            )
        info = ckpt.data_info
        if data.levels != info.get("levels") or (data.scale, data.offset) != (info.get("scale"), info.get("offset")):
            raise ValueError(
                f"The data scaling (levels={data.levels}, scale={data.scale}, offset={data.offset}) differs from the "
                f"one the network was trained with (levels={info.get('levels')}, scale={info.get('scale')}, "
                f"offset={info.get('offset')}); pass matching --levels/--scale/--offset."
            )
        _check_conditional(args, ckpt.score_model, data)
        return ckpt.sde, ckpt.score_model, data, None, f"checkpoint {args.checkpoint}"
    sde = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}[args.sde]()
    gm = GaussianMixture.random(
        args.oracle_dim, args.oracle_components, generator=torch.Generator().manual_seed(args.oracle_seed)
    )
    desc = (f"oracle GaussianMixture.random(dim={args.oracle_dim}, n_components={args.oracle_components}, "
            f"seed={args.oracle_seed})")
    if args.data == "gmm":  # the built-in mixture data set: its own exact score
        from ..data import gmm_oracle

        gm, desc = gmm_oracle(), "oracle sdeflow.data.gmm_oracle()"
        args.oracle_dim = gm.dim
    if args.data:
        data = load_dataset(args.data, split_for(args.data), **user)
    else:
        from ..data import Dataset

        n = args.limit or 1000
        x, comp = gm.sample_labelled(n, generator=torch.Generator().manual_seed(args.oracle_seed + 1))
        data = Dataset("oracle", x, None, 1.0, 0.0, (args.oracle_dim,), labels=comp)
    if tuple(data.sample_shape) != (args.oracle_dim,):
        raise ValueError(
            f"The oracle has dimension {args.oracle_dim} but the data has samples of shape {data.sample_shape}; "
            "pass --oracle-dim to match."
        )
    if args.conditional:
        score = gm.conditional_score_model(sde)
        _check_conditional(args, score, data)
        prior = (lambda labels: gm.prior_logp(sde, labels=labels)) if args.prior == "oracle" else None
        return sde, score, data, prior, desc
    prior = gm.prior_logp(sde) if args.prior == "oracle" else None
    return sde, gm.score_model(sde), data, prior, desc


def _check_conditional(args: argparse.Namespace, score, data) -> None:  # noqa: ANN001
    """--conditional needs a class-conditional model and labelled data whose labels the model knows."""
    if not args.conditional:
        return
    if score.num_classes is None:
        raise ValueError("--conditional needs a class-conditional model; this checkpoint is unconditional (train "
                         "with --conditional).")
    if data.labels is None:
        raise ValueError(f"--conditional needs class labels, but the data {data.name!r} has none (use an .npz with "
                         "'labels' or 'test_labels').")
    if int(data.labels.max()) >= score.num_classes:
        raise ValueError(f"The labels of {data.name!r} reach {int(data.labels.max())}, but the model has "
                         f"{score.num_classes} classes (0..{score.num_classes - 1}).")


def _evaluate(args, sde, score, data, n, mine, *, seeds_base, kwargs, rows, bar, device) -> None:  # noqa: ANN001
    """Compute this rank's batches ``mine`` (fixed index ranges of size --batch-size) into ``rows``."""
    import math

    import torch

    from ..likelihood import bits_per_dim, log_likelihood

    d = math.prod(data.sample_shape)
    for b in mine:
        idx = torch.arange(b * args.batch_size, min(n, (b + 1) * args.batch_size))
        seeds = seeds_base + idx
        x = data.x[idx].to(device)
        if args.conditional:  # log p(x | c): every example under its own label
            labels = data.labels[idx]
            kwargs = {**kwargs, "cond": labels.to(device)}
            if callable(kwargs.get("prior_logp")) and getattr(args, "prior", "sde") == "oracle":
                kwargs["prior_logp"] = kwargs["prior_logp"](labels)
        if data.levels is not None:
            res = bits_per_dim(sde, score, x, levels=data.levels, scale=data.scale, offset=data.offset,
                               draws=args.draws, bound=args.bound, seeds=seeds, **kwargs)
            lik = res.results[0]
            cols = {"bpd": res.bpd, "bpd_std_err": res.std_err, "plain_bpd": res.plain_bpd,
                    "plain_bpd_std_err": res.plain_std_err, "importance_bpd": res.importance_bpd,
                    "importance_bpd_std_err": res.importance_std_err, "log_p": res.log_p}
            nfe, steps = res.nfe / args.draws, sum(r.n_steps for r in res.results) / args.draws
        else:
            lik = log_likelihood(sde, score, x, seeds=seeds, **kwargs)
            cols = {"log_p": lik.log_p, "log_p_std_err": lik.std_err}
            nfe, steps = lik.nfe, lik.n_steps
        for j, i in enumerate(idx.tolist()):
            row = {"index": i, **({"label": int(data.labels[i])} if args.conditional else {})}
            row.update({k: float(v[j]) for k, v in cols.items()})
            row.update(nats_per_dim=-row["log_p"] / d, prior_logp=float(lik.prior_logp[j]),
                       delta_logp=float(lik.delta_logp[j]), nfe=nfe, n_steps=steps, batch=b)
            rows.append(row)
        if bar is not None:
            bar.update(len(idx))


def run(args: argparse.Namespace) -> int:
    import json
    import math
    import sys
    from pathlib import Path

    import torch

    from .. import distributed as D
    from .._utils import atomic_write
    from .._validate import json_safe
    from ..likelihood import LikelihoodError

    for name in ("batch_size", "probes", "draws"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}.")
    for name in ("rtol", "atol", "eps"):  # counts, --device and --out: sdeflow.cli.check_common
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be a finite number > 0; got {value}.")
    sde, score, data, prior, desc = _source(args)
    if args.dtype == "float64" and isinstance(getattr(score, "net", None), torch.nn.Module):
        score.net.double()  # the network computes in the solver's dtype
    ctx = D.init_from_env(args.device)
    try:
        n = len(data) if args.limit is None else min(args.limit, len(data))
        dtype = getattr(torch, args.dtype)
        kwargs = dict(
            method=args.method, rtol=args.rtol, atol=args.atol, eps=args.eps, divergence=args.divergence,
            probes=args.probes, dtype=dtype, time_variable=args.time_variable, max_steps=args.max_steps,
            prior_logp=prior, state_dtype=getattr(torch, args.state_dtype), error_control=args.error_control,
        )
        if hasattr(score, "to"):
            score.to(ctx.device)
        n_batches = math.ceil(n / args.batch_size)
        mine = D.shard(n_batches, ctx)
        bar = None
        if ctx.is_main and not args.no_progress:
            from tqdm import tqdm

            total = sum(min(n, (b + 1) * args.batch_size) - b * args.batch_size for b in mine)
            bar = tqdm(total=total, desc=f"likelihood (rank 0 of {ctx.world_size})", unit="ex")
        rows: list[dict] | str = []
        try:
            _evaluate(args, sde, score, data, n, mine, seeds_base=args.seed * (1 << 32), kwargs=kwargs, rows=rows,
                      bar=bar, device=ctx.device)
        except (ValueError, TypeError, LikelihoodError) as err:
            rows = " ".join(f"{type(err).__name__}: {err}".split())
        if bar is not None:
            bar.close()
        gathered = D.gather_objects(rows, ctx)
    finally:
        D.shutdown()
    failures = [part for part in gathered if isinstance(part, str)]
    if failures:
        if ctx.is_main:
            print(f"sdeflow likelihood: error: {failures[0]}", file=sys.stderr)
        return 1  # the computation failed (e.g. the solver did not converge); argument errors exit with 2
    if not ctx.is_main:
        return 0
    discrete = data.levels is not None
    rows = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
    out = Path(args.out)
    fields = list(rows[0].keys())

    def write_csv(path: Path) -> None:
        with path.open("w") as fh:
            fh.write(",".join(fields) + "\n")
            for r in rows:
                fh.write(",".join(repr(r[f]) if isinstance(r[f], float) else str(r[f]) for f in fields) + "\n")

    key = "bpd" if discrete else "nats_per_dim"
    vals = torch.tensor([r[key] for r in rows], dtype=torch.float64)
    batch_nfe = {r["batch"]: r["nfe"] for r in rows}
    summary = {
        "model": desc,
        "data": {"name": data.name, "split": args.split or "oracle samples", "n": n, "levels": data.levels,
                 "scale": data.scale, "offset": data.offset, "sample_shape": list(data.sample_shape)},
        f"mean_{key}": float(vals.mean()),
        f"{key}_std_err": float(vals.std() / math.sqrt(len(vals))) if len(vals) > 1 else float("nan"),
        "mean_log_p": float(sum(r["log_p"] for r in rows) / len(rows)),
        **({f"mean_{b}_bpd": float(sum(r[f"{b}_bpd"] for r in rows) / len(rows)) for b in ("plain", "importance")}
           if discrete else {}),
        "nfe_mean": sum(batch_nfe.values()) / len(batch_nfe),
        "nfe_max": max(batch_nfe.values()),
        "settings": {**{k: v for k, v in kwargs.items() if k not in ("dtype", "prior_logp", "state_dtype")},
                     "dtype": args.dtype, "state_dtype": args.state_dtype,
                     "draws": args.draws if discrete else None, "bound": args.bound if discrete else None,
                     "batch_size": args.batch_size, "seed": args.seed,
                     "world_size": ctx.world_size, "prior": args.prior},
        "status": "success",
    }
    if args.conditional:
        from ..likelihood import per_class

        summary["conditional"] = True
        summary[f"per_class_{key}"] = per_class(vals, torch.tensor([r["label"] for r in rows]))
    atomic_write(out / "likelihood.csv", write_csv)
    atomic_write(out / "summary.json",
                 lambda p: p.write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False)))
    from ..images import is_image_shape, save_likelihood_plots

    images = data.x[[r["index"] for r in rows]] if is_image_shape(tuple(data.sample_shape)) else None
    plots = save_likelihood_plots(out, vals, unit="bits/dim" if discrete else "nats/dim", images=images, data=data)
    print(f"{key}: {summary[f'mean_{key}']:.4f} +- {summary[f'{key}_std_err']:.4f} over {n} examples, "
          f"NFE mean {summary['nfe_mean']:.0f} max {summary['nfe_max']:.0f}")
    if discrete and args.draws > 1:
        print(f"bits/dim over {args.draws} draws: plain {summary['mean_plain_bpd']:.4f}, importance-weighted "
              f"{summary['mean_importance_bpd']:.4f} (reported as bpd: {args.bound})")
    if args.conditional:
        per = summary[f"per_class_{key}"]
        print(f"conditional {key} per class: " + ", ".join(f"{c}: {v['mean']:.3f}" for c, v in per.items()))
    print(f"wrote {', '.join(str(p) for p in [out / 'likelihood.csv', out / 'summary.json', *plots])}")
    return 0
