"""A small classifier that labels samples, to measure whether class-conditional samples show their class.

``train_classifier(dataset)`` fits a small CNN (images [C, H, W]) or MLP (vectors [D]) on a labelled training set with
Adam and cross-entropy, on uniformly dequantised inputs (the same noise the diffusion model was trained on, so
samples and training inputs look alike); ``guided_accuracy`` samples every class with classifier-free guidance and
reports the fraction the classifier assigns to the requested class. Plain torch, no further dependency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import _validate as V
from .data import Dataset

__all__ = ["train_classifier", "accuracy", "guided_accuracy", "GuidedAccuracy"]


def _network(sample_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(sample_shape) == 3:
        c, h, w = sample_shape
        return nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * math.ceil(h / 2) * math.ceil(w / 2), 64), nn.ReLU(),
            nn.Linear(64, num_classes),
        )
    d = math.prod(sample_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, num_classes))


def train_classifier(data: Dataset, *, steps: int = 600, batch_size: int = 128, lr: float = 3e-3, seed: int = 0
                     ) -> nn.Module:
    """Fit a classifier p(c | x) to the labelled ``data`` (cross-entropy, Adam, seeded); returns it in eval mode."""
    if data.labels is None:
        raise ValueError(f"`data` must carry class labels to train a classifier; {data.name!r} has none.")
    steps, batch_size = V.check_int(steps, "steps", min=1), V.check_int(batch_size, "batch_size", min=1)
    g = torch.Generator().manual_seed(V.check_int(seed, "seed", min=0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _network(tuple(data.sample_shape), int(data.labels.max()) + 1)  # K: labels 0..K-1
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=g)
        x, y = data.dequantize(g, idx), data.labels[idx]
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(classifier: nn.Module, x: Tensor, labels: Tensor) -> float:
    """The fraction of ``x`` that ``classifier`` assigns to ``labels`` (argmax of its logits)."""
    return float((classifier(x.float().cpu()).argmax(1) == labels.cpu()).double().mean())


@dataclass(frozen=True)
class GuidedAccuracy:
    """``accuracy[w]``: the classifier's accuracy on samples of every class drawn with guidance w; ``n``: samples
    per w (``n_per_class`` of each class); ``nfe[w]``: network calls per batch; ``samples[w]``: the samples [n, ...]
    (class c in rows c * n_per_class ...), ``labels`` [n]."""

    accuracy: dict[float, float]
    nfe: dict[float, int]
    n: int
    samples: dict[float, Tensor]
    labels: Tensor


def guided_accuracy(model: Any, sde: Any, classifier: nn.Module, guidance: Sequence[float], *,
                    n_per_class: int = 20, seed: int = 0, **sample_kwargs: Any) -> GuidedAccuracy:
    """Sample ``n_per_class`` images of each of the model's K classes at every guidance weight w (the same x_T and
    noise for every w: seed + i for sample i) and measure the classifier's accuracy on them."""
    from .sampling import sample

    k = getattr(model, "num_classes", None)
    if k is None:
        raise ValueError("`model` must be class-conditional (num_classes set) to measure guided accuracy.")
    n_per_class = V.check_int(n_per_class, "n_per_class", min=1)
    labels = torch.arange(k).repeat_interleave(n_per_class)
    shape = getattr(model.net, "sample_shape", None)
    if shape is None:
        raise ValueError("`model`'s network must declare its sample_shape.")
    acc, nfe, samples = {}, {}, {}
    for w in guidance:
        res = sample(model, sde, shape=(len(labels), *shape), seed=seed, cond=labels, guidance=float(w),
                     **sample_kwargs)
        acc[float(w)] = accuracy(classifier, res.samples, labels)
        nfe[float(w)] = res.nfe
        samples[float(w)] = res.samples.cpu()
    return GuidedAccuracy(acc, nfe, len(labels), samples, labels)
