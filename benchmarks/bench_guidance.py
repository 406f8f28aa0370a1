"""Classifier-free guidance on the digits: does a guided sample show the class it was asked for?

A small CNN is trained here on the 1500 training digits (``sdeflow.classifier.train_classifier``: cross-entropy,
Adam, on dequantised inputs; its accuracy on the 297 test digits is reported); it then labels ``--per-class`` samples
of each of the ten classes drawn from a class-conditional checkpoint (``sdeflow quickstart`` trains one) with
DPM-Solver++(2M), 20 steps, at guidance weights w = 0 (plain conditional sampling), 1, 2, 4 (the same x_T for every
w). Convention: out = out(x | c) + w (out(x | c) - out(x | none)), diffusers' guidance_scale = 1 + w; one batched
network call on 2B rows counts as 1 NFE.

    sdeflow quickstart
    python benchmarks/bench_guidance.py --checkpoint runs/quickstart/model --per-class 50 --grid docs/guided_digits.png
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import sdeflow
from sdeflow.classifier import accuracy, guided_accuracy, train_classifier

WEIGHTS = (0.0, 1.0, 2.0, 4.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/quickstart/model")
    p.add_argument("--per-class", type=int, default=50, help="samples per class and w (default 50)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", default=None, help="write the w = 2 samples (10 per class, one row per class) here")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(1)
    ckpt = sdeflow.load(args.checkpoint)
    train, test = sdeflow.load_dataset("digits"), sdeflow.load_dataset("digits", "test")
    t0 = time.perf_counter()
    clf = train_classifier(train, seed=args.seed)
    clf_seconds = time.perf_counter() - t0
    clf_test = accuracy(clf, test.x, test.labels)
    t0 = time.perf_counter()
    res = guided_accuracy(ckpt.score_model, ckpt.sde, clf, WEIGHTS, n_per_class=args.per_class, seed=args.seed,
                          method="dpmsolver++", steps=args.steps)
    seconds = time.perf_counter() - t0
    # an unconditional sample (null class) has no requested class: the classifier's label histogram shows coverage
    uncond = sdeflow.sample(ckpt.score_model, ckpt.sde, shape=(res.n, *ckpt.sample_shape), seed=args.seed,
                            method="dpmsolver++", steps=args.steps).samples
    hist = torch.bincount(clf(uncond.float()).argmax(1), minlength=10).tolist()
    print(f"classifier: small CNN, {clf_seconds:.1f} s to train, {clf_test:.1%} on the {len(test)} test digits")
    print(f"{res.n} samples per w ({args.per_class} per class), DPM-Solver++(2M) {args.steps} steps, "
          f"{seconds:.1f} s in all")
    print("| w (guidance_scale = 1 + w) | accuracy | NFE |")
    print("|---|---|---|")
    for w in WEIGHTS:
        print(f"| {w:g} ({1 + w:g}) | {res.accuracy[w]:.1%} | {res.nfe[w]} |")
    print(f"unconditional samples (null class), classifier's labels 0-9: {hist}")
    if args.grid:
        k, per = 10, min(10, args.per_class)
        rows = torch.cat([res.samples[2.0][c * args.per_class : c * args.per_class + per] for c in range(k)])
        from sdeflow.images import save_samples

        save_samples(args.grid, rows, data=ckpt.data_info, scale=4)
        print(f"wrote {args.grid}")
    if args.json:
        from pathlib import Path

        from sdeflow._utils import atomic_write

        out = {"classifier_test_accuracy": clf_test, "per_class": args.per_class, "steps": args.steps,
               "accuracy": {str(w): a for w, a in res.accuracy.items()}, "nfe": {str(w): v for w, v in res.nfe.items()},
               "unconditional_label_histogram": hist, "seconds": round(seconds, 1)}
        atomic_write(Path(args.json), lambda tmp: tmp.write_text(json.dumps(out, indent=2)))


if __name__ == "__main__":
    main()
