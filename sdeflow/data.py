"""Built-in data sets and user arrays, each declaring its levels and scaling so that bits/dim is computed correctly.

Every data set lives in *model space*: x = scale * y + offset with y in [0, 1] (scale = 2, offset = -1 maps to
[-1, 1]). Discrete data has K ``levels`` per dimension (integer k in {0..K-1}); its ``x`` holds the bin centres
scale * (k + 1/2) / K + offset, and ``dequantize`` draws the uniformly dequantised training inputs (MATH.md section 5)

    x = scale * (k + u) / K + offset,   u ~ U[0, 1)^D.

Built-in names (``DATASETS``):
    'digits'        the 8x8 handwritten digits of UCI optdigits (as shipped by scikit-learn, 1797 images, 17 grey
                    levels 0..16), shape [1, 8, 8], a fixed split of 1500 train / 297 test images, in [-1, 1];
    'gmm'           samples of the fixed 2-D Gaussian mixture ``gmm_oracle()`` (exact score and density);
    'moons', 'checkerboard', 'swissroll'   the usual 2-D toy sets, scaled to roughly unit variance.
The 2-D sets are generated deterministically (numpy PCG64; seed 0 for 'train', 1 for 'test'), 8192 train and 2048
test points. Any other name is a path to a user array (.npy or .npz), see ``load_dataset``.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._validate import bad_value, check_float, check_int
from .oracle import GaussianMixture

__all__ = ["Dataset", "DATASETS", "load_dataset", "gmm_oracle", "gaussian_bpd", "GaussianBaseline"]

DATASETS: tuple[str, ...] = ("digits", "gmm", "moons", "checkerboard", "swissroll")
SPLITS: tuple[str, ...] = ("train", "test")
_TOY_SIZE = {"train": 8192, "test": 2048}
_DIGITS_FILE = Path(__file__).resolve().parent / "data" / "digits.npz"


@dataclass(frozen=True, eq=False)
class Dataset:
    """A data set in model space.

    Attributes:
        name: the built-in name or the file path.
        x: float32 [N, *sample_shape]; for discrete data the bin centres scale * (k + 1/2) / K + offset.
        levels: K levels per dimension for discrete data, None for continuous data.
        scale, offset: model x = scale * y + offset with y in [0, 1].
        sample_shape: the shape of one sample, e.g. (1, 8, 8) or (2,).
        codes: the integer levels k (uint8/int64, shape of ``x``) for discrete data, else None.
        labels: class labels [N] where the data set has them, else None.
    """

    name: str
    x: Tensor
    levels: int | None
    scale: float
    offset: float
    sample_shape: tuple[int, ...]
    codes: Tensor | None = field(default=None, repr=False)
    labels: Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        """D, the number of dimensions of one sample."""
        return math.prod(self.sample_shape)

    @property
    def num_classes(self) -> int | None:
        """K = 1 + the largest class label (labels 0..K-1), or None for data without labels."""
        return None if self.labels is None or not len(self.labels) else int(self.labels.max()) + 1

    @property
    def info(self) -> dict:
        """The JSON description stored in checkpoints: name, levels, scale, offset, sample_shape."""
        return {
            "name": self.name,
            "levels": self.levels,
            "scale": self.scale,
            "offset": self.offset,
            "sample_shape": list(self.sample_shape),
        }

    def dequantize(self, generator: torch.Generator | None = None, index: Tensor | None = None) -> Tensor:
        """Uniformly dequantised samples scale * (k + u) / K + offset, u ~ U[0, 1), of all rows or rows ``index``.

        Continuous data is returned unchanged (there is nothing to dequantise).
        """
        if self.levels is None or self.codes is None:
            return self.x if index is None else self.x[index]
        k = self.codes if index is None else self.codes[index]
        u = torch.rand(k.shape, generator=generator, dtype=torch.float32)
        return self.scale * (k.to(torch.float32) + u) / self.levels + self.offset


def gmm_oracle() -> GaussianMixture:
    """The fixed 2-D Gaussian mixture behind the 'gmm' data set: 4 anisotropic components, overall std ~1."""
    weights = [0.3, 0.2, 0.25, 0.25]
    means = [[-1.0, -0.8], [1.1, -0.9], [0.9, 1.0], [-1.0, 1.0]]
    covs = [
        [[0.10, 0.05], [0.05, 0.08]],
        [[0.05, 0.00], [0.00, 0.15]],
        [[0.12, -0.06], [-0.06, 0.09]],
        [[0.04, 0.00], [0.00, 0.04]],
    ]
    return GaussianMixture(weights, torch.tensor(means), torch.tensor(covs))


def _toy(name: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(seed))
    if name == "gmm":
        g = torch.Generator().manual_seed(seed)
        return gmm_oracle().sample(n, generator=g, dtype=torch.float64).numpy()
    if name == "moons":
        # two interleaved half circles, noise std 0.1, centred and scaled to std ~1
        upper = rng.random(n) < 0.5
        a = np.pi * rng.random(n)
        x = np.where(upper, np.cos(a), 1.0 - np.cos(a))
        y = np.where(upper, np.sin(a), 0.5 - np.sin(a))
        pts = np.stack([x - 0.5, y - 0.25], 1) + 0.1 * rng.standard_normal((n, 2))
        return pts / np.array([0.87, 0.5])
    if name == "checkerboard":
        # uniform on the 8 black squares of a 4x4 board on [-2, 2]^2, scaled to std ~1
        x1 = 4.0 * rng.random(n) - 2.0
        x2 = rng.random(n) - rng.integers(0, 2, n) * 2.0
        x2 = x2 + (np.floor(x1) % 2)
        return np.stack([x1, x2], 1) / 1.15
    if name == "swissroll":
        # the 2-D swiss roll (x, z) of radius 1.5 pi .. 4.5 pi, noise std 0.5, centred and scaled to std ~1
        r = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
        pts = np.stack([r * np.cos(r), r * np.sin(r)], 1) + 0.5 * rng.standard_normal((n, 2))
        return (pts - np.array([2.05, 0.17])) / 7.0
    raise AssertionError(name)  # unreachable: names are checked by the caller


def _digits(split: str) -> Dataset:
    with np.load(_DIGITS_FILE) as f:
        idx = f[split]
        codes = torch.from_numpy(f["images"][idx].astype(np.int64))[:, None]  # [N, 1, 8, 8]
        labels = torch.from_numpy(f["labels"][idx].astype(np.int64))
    return _discrete("digits", codes, 17, 2.0, -1.0, labels)


def _discrete(name: str, codes: Tensor, levels: int, scale: float, offset: float, labels: Tensor | None) -> Dataset:
    x = scale * (codes.to(torch.float32) + 0.5) / levels + offset
    return Dataset(name, x, levels, float(scale), float(offset), tuple(x.shape[1:]), codes, labels)


_NPY_MAGIC = b"\x93NUMPY"


def _read_npy(path: Path, source: str, read: Callable[[], np.ndarray]) -> np.ndarray:
    """``read()`` with NumPy's errors turned into messages about the file (never advice to unpickle)."""
    try:
        arr = read()
    except ValueError as err:
        if "pickle" in str(err):  # an array of Python objects: sdeflow never unpickles
            raise ValueError(
                f"{source} holds Python objects (dtype object), which sdeflow never loads (unpickling runs code). "
                "Save a numeric array instead, e.g. numpy.save(path, np.asarray(x, dtype=np.float32))."
            ) from None
        raise ValueError(f"{source} is truncated or corrupt ({err}); write it again with numpy.save.") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"{source} is truncated or corrupt ({err}); write it again with numpy.save.") from None
    return arr


def _user_array(path: Path, split: str) -> np.ndarray:
    if path.suffix == ".npy":
        if split != "train":
            raise ValueError(
                f"{path} is a single .npy array, which serves split 'train' only; got split={split!r}. "
                "Save an .npz with arrays 'train' and 'test' to provide a test split."
            )
        with open(path, "rb") as f:
            head = f.read(len(_NPY_MAGIC))
        if head != _NPY_MAGIC:
            raise ValueError(f"{path} is not a .npy file (it does not start with the NumPy header); save arrays "
                             "with numpy.save.")
        return _read_npy(path, str(path), lambda: np.load(path, allow_pickle=False))
    try:
        f = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a valid .npz archive ({' '.join(str(err).split())}); write it again with "
                         "numpy.savez.") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a .npy array named .npz; rename it to .npy or save it with numpy.savez.")
    with f:
        keys = [k for k in f.keys() if k not in LABEL_KEYS]
        name = split if split in keys else (keys[0] if split == "train" and len(keys) == 1 else None)
        if name is None:
            raise ValueError(
                f"{path} has arrays {keys} but no array named {split!r}; an .npz holds either one array (the "
                "training data) or arrays named 'train' and 'test'."
            )
        return _read_npy(path, f"{path} (array {name!r})", lambda: f[name])


LABEL_KEYS = ("labels", "train_labels", "test_labels")


def _user_labels(path: Path, split: str, n: int) -> Tensor | None:
    """Class labels of a user .npz: ``{split}_labels`` ('train_labels' / 'test_labels'), or ``labels`` for an archive
    holding one data array (the training data); integers >= 0, one per example. None when there are none."""
    if path.suffix != ".npz":
        return None
    with np.load(path, allow_pickle=False) as f:
        keys = list(f.keys())
        key = f"{split}_labels" if f"{split}_labels" in keys else (
            "labels" if "labels" in keys and split == "train" else None)
        if key is None:
            return None
        lab = _read_npy(path, f"{path} (array {key!r})", lambda: f[key])
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"`{key}` in {path} must be a 1-D array of one class label per example ([N] = [{n}]); got "
                         f"shape {list(lab.shape)}. Save it with numpy.savez(..., {key}=labels).")
    if not np.issubdtype(lab.dtype, np.integer) and not (np.issubdtype(lab.dtype, np.floating)
                                                         and np.isfinite(lab).all() and (lab == np.round(lab)).all()):
        raise ValueError(f"`{key}` in {path} must hold integer class labels 0..K-1; got dtype {lab.dtype}.")
    if lab.min() < 0:
        raise ValueError(f"`{key}` in {path} must hold class labels 0..K-1; got {lab.min()}. Relabel the classes "
                         "as 0..K-1.")
    return torch.from_numpy(lab.astype(np.int64))


def load_dataset(
    name: str,
    split: str = "train",
    *,
    levels: int | None = None,
    scale: float | None = None,
    offset: float | None = None,
) -> Dataset:
    """Load a built-in data set (``DATASETS``) or a user array, in model space.

    Args:
        name: a built-in name or a path to a .npy/.npz file. A file holds [N, D] vectors, [N, H, W] single-channel
            images (stored as [N, 1, H, W]) or [N, C, H, W] images; an .npz holds one array or arrays 'train'/'test'.
            Class labels (for conditional training) come from an .npz: 'train_labels' / 'test_labels', or 'labels'
            next to a single data array; integers 0..K-1, one per example.
        split: 'train' or 'test'.
        levels: for user arrays of discrete data: K, with integer entries k in {0..K-1}; x = scale (k + 1/2) / K
            + offset (default scale 2, offset -1, i.e. [-1, 1]). Without ``levels`` the array is continuous and
            used as x = scale * array + offset (default scale 1, offset 0: as stored).
        scale, offset: see ``levels``. Built-in data sets have fixed scalings and reject these arguments.
    """
    if split not in SPLITS:
        raise ValueError(f"Invalid split {split!r}. Must be one of {SPLITS}.")
    if not isinstance(name, str | os.PathLike):
        raise bad_value("name", f"a data set name {DATASETS} or a .npy/.npz path", name, error=TypeError)
    name = os.fspath(name)
    if scale is not None:
        scale = check_float(scale, "scale", min=0, min_open=True)
    if offset is not None:
        offset = check_float(offset, "offset")
    if name in DATASETS:
        if levels is not None or scale is not None or offset is not None:
            raise ValueError(
                f"The built-in data set {name!r} has a fixed scaling; do not pass `levels`, `scale` or `offset`."
            )
        if name == "digits":
            return _digits(split)
        pts = _toy(name, _TOY_SIZE[split], seed=SPLITS.index(split))
        return Dataset(name, torch.from_numpy(pts.astype(np.float32)), None, 1.0, 0.0, (2,))
    path = Path(name)
    if path.suffix not in (".npy", ".npz"):
        raise ValueError(
            f"Unknown data set {name!r}. Must be one of {DATASETS} or a path to a .npy/.npz file."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Data file {name!r} does not exist (built-in data sets: {DATASETS}).")
    arr = _user_array(path, split)
    if arr.ndim not in (2, 3, 4) or arr.shape[0] < 1 or arr.size == 0:
        raise ValueError(
            f"The array in {name} must have shape [N, D], [N, H, W] or [N, C, H, W]; got shape {arr.shape}."
        )
    if arr.ndim == 3:
        arr = arr[:, None]
    if levels is not None:
        levels = check_int(levels, "levels", min=2)
        if not np.issubdtype(arr.dtype, np.integer) and not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"With `levels`={levels} the array in {name} must hold integers; got {arr.dtype}.")
        if arr.min() < 0 or arr.max() > levels - 1:
            raise ValueError(
                f"With `levels`={levels} the entries must lie in 0..{levels - 1}; got {arr.min()}..{arr.max()}. "
                "Pass the right `levels` (256 for 8-bit images)."
            )
        codes = torch.from_numpy(arr.astype(np.int64))
        s = 2.0 if scale is None else float(scale)
        o = -1.0 if offset is None else float(offset)
        return _discrete(str(name), codes, levels, s, o, _user_labels(path, split, arr.shape[0]))
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"The array in {name} must be numeric; got dtype {arr.dtype}.")
    s = 1.0 if scale is None else float(scale)
    o = 0.0 if offset is None else float(offset)
    x = torch.from_numpy((s * arr.astype(np.float64) + o).astype(np.float32))
    if not torch.isfinite(x).all():
        raise ValueError(f"The array in {name} contains NaN or infinite values.")
    return Dataset(str(name), x, None, s, o, tuple(x.shape[1:]), labels=_user_labels(path, split, arr.shape[0]))


@dataclass(frozen=True, eq=False)
class GaussianBaseline:
    """Bits/dim of a full-covariance Gaussian fitted to dequantised training data, evaluated on test data.

    Attributes: ``bpd`` (mean over test points), ``bpd_stderr`` (its standard error over test points),
    ``per_sample`` [N_test] and the fitted ``mean`` [D] and ``covariance`` [D, D] (model space, float64).
    """

    bpd: float
    bpd_stderr: float
    per_sample: Tensor
    mean: Tensor
    covariance: Tensor


def gaussian_bpd(train: Dataset, test: Dataset) -> GaussianBaseline:
    """Exact bits/dim of the maximum-likelihood Gaussian for the uniformly dequantised training data.

    With bin centres c and bin width w = scale / K, dequantised data is x = c + w (u - 1/2), u ~ U[0,1)^D, so the
    fit is exact in expectation over u: mu = mean(c), S = cov(c) + w^2/12 I (the MLE, biased covariance). The test
    value is the expectation over the dequantisation noise, also closed form:
        E_u[-log N(x; mu, S)] = 1/2 [ (c - mu)^T S^-1 (c - mu) + w^2/12 tr(S^-1) + log det(2 pi S) ],
        bpd = E_u[-log p_x] / (D ln 2) - log2(scale) + log2(K).
    Continuous data (``levels`` None) uses the plain Gaussian fit and bpd = -log p_x / (D ln 2).
    """
    if train.sample_shape != test.sample_shape or train.levels != test.levels:
        raise ValueError(
            f"`train` and `test` must be splits of the same data; got shapes {train.sample_shape} / "
            f"{test.sample_shape} and levels {train.levels} / {test.levels}."
        )
    c_tr = train.x.reshape(len(train), -1).double()
    c_te = test.x.reshape(len(test), -1).double()
    d = c_tr.shape[1]
    w2_12 = 0.0 if train.levels is None else (train.scale / train.levels) ** 2 / 12.0
    mu = c_tr.mean(0)
    cov = torch.cov(c_tr.T, correction=0).reshape(d, d) + w2_12 * torch.eye(d, dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    r = torch.linalg.solve_triangular(chol, (c_te - mu).T, upper=False)  # L^-1 (c - mu)
    quad = (r**2).sum(0)
    trace_inv = torch.cholesky_inverse(chol).diagonal().sum()
    logdet = 2 * torch.log(chol.diagonal()).sum()
    nll = 0.5 * (quad + w2_12 * trace_inv + logdet + d * math.log(2 * math.pi))
    bpd = nll / (d * math.log(2))
    if train.levels is not None:
        bpd = bpd - math.log2(train.scale) + math.log2(train.levels)
    stderr = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    return GaussianBaseline(float(bpd.mean()), stderr, bpd, mu, cov)
