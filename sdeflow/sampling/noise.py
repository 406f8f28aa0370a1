"""Per-sample randomness: sample i draws its x_T and every noise term from its own generator, seeded by seed_i, so
a seeded sample is identical whatever the batch size (as in EDM, which seeds every image separately).

Generators live on the CPU by default, so a seed gives the same numbers on every device; the noise is moved to the
sampling device after it is drawn. Noise is drawn in chunks of several steps per sample (one ``randn`` call per
sample and chunk, never per element); the chunk length depends only on the sample size and the number of draws,
never on the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["per_sample_seeds", "NoiseSource", "STREAM_SALT"]

_SEED_MOD = 2**62
STREAM_SALT = 0x9E3779B97F4A7C15 % _SEED_MOD  # separates the step-noise stream from the x_T stream


def per_sample_seeds(batch: int, seed: int | Sequence[int] | None, generator: torch.Generator | None) -> list[int]:
    """seed_i = seed + i for an integer ``seed``; the given list; or base + i with base drawn once from
    ``generator`` (or from torch's default generator when neither is given)."""
    if seed is not None and generator is not None:
        raise ValueError("Pass either `seed` or `generator`, not both.")
    if isinstance(seed, Sequence):
        seeds = [int(s) for s in seed]
        if len(seeds) != batch:
            raise ValueError(f"`seed` as a list needs one seed per sample ({batch}); got {len(seeds)}.")
        return seeds
    if seed is None:
        gen_device = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(0, _SEED_MOD, (), generator=generator, device=gen_device))
    return [(int(seed) + i) % _SEED_MOD for i in range(batch)]


class NoiseSource:
    """Standard normal noise of shape [B, *sample_shape], one independent stream per sample.

    ``prior()`` draws x_T's noise; each call ``source()`` returns the next step's noise. ``max_draws`` is the number
    of step draws the sampler will make (it sets the chunk length). Alternatively ``explicit`` noise can be given:
    a tensor [K, B, *sample_shape] whose k-th slice is the k-th draw, or a callable k -> [B, *sample_shape].
    """

    def __init__(
        self,
        seeds: list[int],
        sample_shape: tuple[int, ...],
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        max_draws: int,
        noise_device: torch.device | str = "cpu",
        explicit: Tensor | Callable[[int], Tensor] | None = None,
    ) -> None:
        self.seeds = seeds
        self.sample_shape = tuple(sample_shape)
        self.dtype, self.device, self.noise_device = dtype, torch.device(device), torch.device(noise_device)
        self.max_draws = max(int(max_draws), 1)
        self.explicit = explicit
        self.draws = 0
        numel = max(math.prod(self.sample_shape), 1)
        self._chunk = min(self.max_draws, max(1, 2**14 // numel))
        self._gens: list[torch.Generator] | None = None
        self._buffer: Tensor | None = None
        self._pos = 0

    def prior(self) -> Tensor:
        out = []
        for s in self.seeds:
            g = torch.Generator(self.noise_device).manual_seed(s)
            out.append(torch.randn(self.sample_shape, generator=g, device=self.noise_device, dtype=self.dtype))
        return torch.stack(out).to(self.device)

    def __call__(self) -> Tensor:
        k = self.draws
        self.draws += 1
        if self.explicit is not None:
            z = self.explicit(k) if callable(self.explicit) else self._explicit_slice(k)
            return z.to(device=self.device, dtype=self.dtype)
        if self._buffer is None or self._pos == self._buffer.shape[1]:
            if self._gens is None:
                self._gens = [
                    torch.Generator(self.noise_device).manual_seed((s + STREAM_SALT) % _SEED_MOD) for s in self.seeds
                ]
            shape = (self._chunk, *self.sample_shape)
            self._buffer = torch.stack(
                [torch.randn(shape, generator=g, device=self.noise_device, dtype=self.dtype) for g in self._gens]
            ).to(self.device)
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
