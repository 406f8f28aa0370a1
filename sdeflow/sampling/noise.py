"""Per-sample randomness: sample i draws its x_T and every noise term from its own generator, seeded by seed_i, so
a seeded sample is identical whatever the batch size (as in EDM, which seeds every image separately).

THE generator (documented so that numpy-only code reproduces it; ``export/runtime.py`` does, for ONNX graphs):

    seed_i = (seed + i) mod 2**62                                  (or the i-th seed of a list)
    x_T[i]   = prior_std * cast(np.random.default_rng([seed_i, 0]).standard_normal(sample_shape))
    noise[k, i] = cast(z_i[k]),  z_i = np.random.default_rng([seed_i, 1]).standard_normal((K, *sample_shape))

numpy's PCG64 generator with float64 standard normals, cast to the sampling dtype (then scaled by the prior std in
that dtype, as ``sde.prior_std * x`` does). Stream 0 is x_T and stream 1 the step noise, so the step noise does
not depend on how x_T was drawn. Draws are consumed in order: a chunk of n draws followed by a chunk of m equals one
draw of n + m (numpy generates normals element by element), so the chunk length is free; noise is drawn in chunks of
several steps per sample and moved to the sampling device afterwards, which makes a seed give the same numbers on
every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["per_sample_seeds", "NoiseSource", "STREAM_SALT", "PRIOR_STREAM", "NOISE_STREAM", "sample_rng"]

_SEED_MOD = 2**62
STREAM_SALT = 0x9E3779B97F4A7C15 % _SEED_MOD  # seeds torchsde's Brownian tree apart from the per-sample streams
PRIOR_STREAM = 0  # x_T
NOISE_STREAM = 1  # the step noise


def sample_rng(seed_i: int, stream: int) -> np.random.Generator:
    """The generator of sample seed ``seed_i`` for ``stream`` (0: x_T, 1: step noise)."""
    return np.random.default_rng([int(seed_i) % _SEED_MOD, int(stream)])


def per_sample_seeds(batch: int, seed: int | Sequence[int] | None, generator: torch.Generator | None) -> list[int]:
    """seed_i = (seed + i) mod 2**62 for an integer ``seed``; the given list; or base + i with base drawn once
    from ``generator`` (or from torch's default generator when neither is given)."""
    if seed is not None and generator is not None:
        raise ValueError("Pass either `seed` or `generator`, not both.")
    if isinstance(seed, Sequence):
        seeds = [int(s) % _SEED_MOD for s in seed]
        if len(seeds) != batch:
            raise ValueError(f"`seed` as a list needs one seed per sample ({batch}); got {len(seeds)}.")
        return seeds
    if seed is None:
        gen_device = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(0, _SEED_MOD, (), generator=generator, device=gen_device))
    return [(int(seed) + i) % _SEED_MOD for i in range(batch)]


class NoiseSource:
    """Standard normal noise of shape [B, *sample_shape], one independent stream per sample (module docstring).

    ``prior()`` draws x_T's standard normal noise; each call ``source()`` returns the next step's noise.
    ``max_draws`` is the number of step draws the sampler will make (it sets the chunk length). Alternatively
    ``explicit`` noise can be given: a tensor [K, B, *sample_shape] whose k-th slice is the k-th draw, or a callable
    k -> [B, *sample_shape]. Numbers are drawn by numpy on the host, so they are identical on every device.
    """

    def __init__(
        self,
        seeds: list[int],
        sample_shape: tuple[int, ...],
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        max_draws: int,
        explicit: Tensor | Callable[[int], Tensor] | None = None,
    ) -> None:
        self.seeds = [int(s) for s in seeds]
        self.sample_shape = tuple(sample_shape)
        self.dtype, self.device = dtype, torch.device(device)
        self.max_draws = max(int(max_draws), 1)
        self.explicit = explicit
        self.draws = 0
        numel = max(math.prod(self.sample_shape), 1)
        self._chunk = min(self.max_draws, max(1, 2**14 // numel))
        self._rngs: list[np.random.Generator] | None = None
        self._buffer: Tensor | None = None
        self._pos = 0

    def _cast(self, arr: np.ndarray) -> Tensor:
        return torch.from_numpy(arr).to(dtype=self.dtype).to(self.device)

    def prior(self) -> Tensor:
        """z [B, *sample_shape] of stream 0 (x_T = prior_std * z)."""
        return self._cast(
            np.stack([sample_rng(s, PRIOR_STREAM).standard_normal(self.sample_shape) for s in self.seeds])
        )

    def __call__(self) -> Tensor:
        k = self.draws
        self.draws += 1
        if self.explicit is not None:
            z = self.explicit(k) if callable(self.explicit) else self._explicit_slice(k)
            return z.to(device=self.device, dtype=self.dtype)
        if self._buffer is None or self._pos == self._buffer.shape[1]:
            if self._rngs is None:
                self._rngs = [sample_rng(s, NOISE_STREAM) for s in self.seeds]
            shape = (self._chunk, *self.sample_shape)
            self._buffer = self._cast(np.stack([g.standard_normal(shape) for g in self._rngs]))
            self._pos = 0
        z = self._buffer[:, self._pos]
        self._pos += 1
        return z

    def _explicit_slice(self, k: int) -> Tensor:
        assert isinstance(self.explicit, Tensor)  # the caller dispatched on it
        if k >= self.explicit.shape[0]:
            raise ValueError(
                f"`noise` has {self.explicit.shape[0]} draws but the sampler needs more (draw {k + 1}); pass a "
                f"tensor [K, B, ...] with K >= {self.max_draws}."
            )
        return self.explicit[k]
