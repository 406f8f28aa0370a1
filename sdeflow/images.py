"""Pictures of samples: image grids, 2-D scatter plots, likelihood histograms, denoising trajectories; one writer.

``save_samples(path, samples, ...)`` writes what the extension says:
    .npy            the array (model space, as sampled)
    .npz            one array named 'samples'
    .png            images [B, C, H, W] (C = 1 or 3) as a legible grid (``image_grid``, exact pixels, no matplotlib);
                    2-D points [B, 2] as a scatter plot (a 2-D histogram above ``SCATTER_LIMIT`` points) beside the
                    training data or an exact density
    .pdf, .svg      the same pictures through matplotlib
Anything else is a ValueError naming these extensions (``output_format``, which commands call before computing).

The grid layout, the value mapping and the PNG encoder live in ``sdeflow.export.runtime`` (numpy + zlib only, so the
torch-free runner writes the same grids); this module adds the matplotlib pictures, always through the object API
(``matplotlib.figure.Figure`` with a ``FigureCanvasAgg``), never pyplot or ``matplotlib.use``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sdeflow.export.runtime import (
    ARRAY_FORMATS,
    encode_arrays,
    encode_png,
    grid_layout,
    image_grid,
    is_image_shape,
    samples_png,
)

from ._utils import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "OUTPUT_FORMATS",
    "PICTURE_FORMATS",
    "SCATTER_LIMIT",
    "output_format",
    "has_picture",
    "is_image_shape",
    "image_grid",
    "save_samples",
    "scatter_figure",
    "new_figure",
    "save_figure",
    "picture_extras",
    "training_points",
    "likelihood_figure",
    "save_likelihood_plots",
    "save_trajectory",
]

PICTURE_FORMATS: tuple[str, ...] = (".png", ".pdf", ".svg")
OUTPUT_FORMATS: tuple[str, ...] = (*ARRAY_FORMATS, *PICTURE_FORMATS)
SCATTER_LIMIT = 2000  # more points than this are drawn as a 2-D histogram (a scatter turns into a blot)
_DPI = 120


# --- formats -----------------------------------------------------------------------------------------------------
def has_picture(sample_shape: Sequence[int]) -> bool:
    """Whether samples of this shape have a picture: images [C, H, W] (C = 1 or 3) or 2-D points [2]."""
    shape = tuple(int(s) for s in sample_shape)
    return is_image_shape(shape) or shape == (2,)


def output_format(path: str | Path, sample_shape: Sequence[int] | None = None, name: str = "path") -> str:
    """The lower-case extension of ``path`` if sdeflow writes it (``OUTPUT_FORMATS``), else a ValueError naming the
    supported ones; with ``sample_shape``, a picture extension also needs samples that have a picture. ``name`` is
    the argument named in the message (e.g. '--out'). Call it before computing anything."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(
            f"`{name}` must end in one of {', '.join(OUTPUT_FORMATS)} (arrays: .npy, .npz; pictures: .png, .pdf, "
            f".svg); got {Path(path).name!r}."
        )
    if suffix in PICTURE_FORMATS and sample_shape is not None and not has_picture(sample_shape):
        raise ValueError(
            f"No picture for samples of shape {list(sample_shape)} (pictures show images [C, H, W] with C = 1 or 3 "
            f"and 2-D points); give `{name}` a .npy or .npz name."
        )
    return suffix


def _numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"`{name}` must be a numpy array or a torch tensor; got {type(x).__name__}.")
    return x


def _data_scaling(data: Any) -> dict:
    """{'scale', 'offset'} of model x = scale * y + offset from a Dataset, its ``info`` dict, or None ([-1, 1])."""
    if data is None:
        return {"scale": 2.0, "offset": -1.0}
    get = data.get if isinstance(data, Mapping) else lambda key: getattr(data, key, None)
    scale, offset = get("scale"), get("offset")
    return {"scale": 2.0 if scale is None else float(scale), "offset": -1.0 if offset is None else float(offset)}


# --- writing -----------------------------------------------------------------------------------------------------
def new_figure(width: float, height: float) -> Figure:
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches at 120 dpi with its own Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` atomically in the picture format its extension names (.png, .pdf or .svg)."""
    path = Path(path)
    suffix = output_format(path, name="path")
    if suffix not in PICTURE_FORMATS:
        raise ValueError(f"A figure is a picture: `path` must end in {', '.join(PICTURE_FORMATS)}; got {path.name!r}.")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=suffix[1:], dpi=_DPI))


def _save_pixels(pixels: np.ndarray, path: Path, suffix: str) -> None:
    """uint8 pixels [H, W] or [H, W, 3] as an exact-size PNG (no matplotlib), or embedded in a PDF/SVG page."""
    if suffix == ".png":
        payload = encode_png(pixels)
        atomic_write(path, lambda tmp: tmp.write_bytes(payload))
        return
    h, w = pixels.shape[:2]
    fig = new_figure(w / _DPI, h / _DPI)
    fig.figimage(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=255, resize=False)
    save_figure(fig, path)


def save_samples(
    path: str | Path,
    samples: Any,
    *,
    data: Any = None,
    reference: Any = None,
    log_density: Callable[[np.ndarray], np.ndarray] | None = None,
    scale: int | None = None,
    title: str | None = None,
) -> Path:
    """Write ``samples`` [B, *sample_shape] (model space; numpy or torch) to ``path`` in the format its extension
    names (see the module docstring); atomically: a failure leaves an existing file untouched.

    Args:
        data: the data set's scaling (a ``Dataset``, its ``info`` dict or a checkpoint's ``data_info``): image
            pixels are min(floor(256 clip((x - offset) / scale, 0, 1)), 255); default [-1, 1].
        reference: 2-D only: training points [N, 2] drawn beside the samples on the same axes.
        log_density: 2-D only: a function [M, 2] -> [M] (e.g. an oracle's exact log p_0) drawn beside the samples.
        scale: integer upscaling of image grids (default: the long side reaches 512 px, ``image_grid``).
        title: 2-D only: the title of the samples panel.
    """
    path = Path(path)
    x = _numpy(samples, "samples")
    suffix = output_format(path, x.shape[1:] if x.ndim >= 1 else (), name="path")
    if suffix in ARRAY_FORMATS:
        payload = encode_arrays(x, suffix)
        atomic_write(path, lambda tmp: tmp.write_bytes(payload))
    elif x.ndim == 4:
        s = _data_scaling(data)
        _save_pixels(image_grid(x, data_scale=s["scale"], data_offset=s["offset"], scale=scale), path, suffix)
    else:
        try:
            fig = scatter_figure(x, reference=reference, log_density=log_density, title=title)
        except ImportError:  # no matplotlib: the numpy raster of the torch-free runner
            if suffix != ".png":
                raise
            payload = samples_png(x)
            atomic_write(path, lambda tmp: tmp.write_bytes(payload))
            return path
        save_figure(fig, path)
    return path


def training_points(data_info: Mapping | None, limit: int = 20_000) -> np.ndarray | None:
    """The first ``limit`` training points of the data set a checkpoint's ``data_info`` names (a built-in name, or a
    .npy/.npz file loaded with its recorded levels, scale and offset); None when it names none or the file is gone."""
    from .data import DATASETS, load_dataset

    name = (data_info or {}).get("name")
    if not name:
        return None
    if name in DATASETS:
        data = load_dataset(name)
    elif Path(name).is_file():
        info = data_info or {}
        data = load_dataset(name, levels=info.get("levels"), scale=info.get("scale"), offset=info.get("offset"))
    else:
        return None
    return data.x[:limit].numpy()


def picture_extras(
    path: str | Path, sample_shape: Sequence[int], *, data_info: Mapping | None = None, oracle: Any = None
) -> dict:
    """The keyword arguments of ``save_samples`` for a picture of samples from a model: the data scaling
    (``data_info``, a checkpoint's or an ONNX graph's record of its data set) and, for 2-D points, what to draw
    beside them: the exact density of ``oracle`` (a ``GaussianMixture``) or else the training data it names."""
    if Path(path).suffix.lower() in ARRAY_FORMATS or tuple(sample_shape) != (2,):
        return {"data": data_info}
    if oracle is not None:
        import torch

        return {"log_density": lambda pts: oracle.log_prob(torch.from_numpy(pts)).numpy()}
    return {"reference": training_points(data_info)}


# --- 2-D scatter -------------------------------------------------------------------------------------------------
def _limits(points: list[np.ndarray]) -> tuple[float, float, float, float]:
    """A square window (equal axes) holding the central 99.8% of every point set, with a 10% margin."""
    allp = np.concatenate(points)
    lo, hi = np.percentile(allp, 0.1, axis=0), np.percentile(allp, 99.9, axis=0)
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6) * 1.1
    return centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half


def _draw_points(ax: Any, p: np.ndarray, lims: tuple[float, float, float, float], color: str) -> None:
    if len(p) > SCATTER_LIMIT:  # sqrt(n) / 1.5 bins per axis: a few points in each occupied bin
        bins = int(np.clip(math.sqrt(len(p)) / 1.5, 30, 150))
        cmap = "Blues" if color == "C0" else "Greys"
        ax.hist2d(p[:, 0], p[:, 1], bins=bins, range=[lims[:2], lims[2:]], cmap=cmap, cmin=1, vmin=0)
    else:
        ax.scatter(p[:, 0], p[:, 1], s=max(1.0, 400.0 / math.sqrt(len(p))) / 4, color=color, alpha=0.6, linewidths=0)


def scatter_figure(
    samples: Any,
    *,
    reference: Any = None,
    log_density: Callable[[np.ndarray], np.ndarray] | None = None,
    title: str | None = None,
) -> Figure:
    """2-D samples [B, 2] (a scatter, or a 2-D histogram above ``SCATTER_LIMIT`` points) beside the training data
    ``reference`` [N, 2] and/or the density exp(``log_density``) on a 200 x 200 grid; one square window, equal axes."""
    x = _numpy(samples, "samples").astype(np.float64)
    if x.ndim != 2 or x.shape[1] != 2 or len(x) < 1 or not np.isfinite(x).all():
        raise ValueError(f"`samples` must be finite 2-D points [B, 2]; got shape {list(x.shape)}.")
    ref = None if reference is None else _numpy(reference, "reference").astype(np.float64)
    if ref is not None and (ref.ndim != 2 or ref.shape[1] != 2):
        raise ValueError(f"`reference` must be 2-D points [N, 2]; got shape {list(ref.shape)}.")
    lims = _limits([x] if ref is None else [x, ref])
    panels = 1 + (ref is not None) + (log_density is not None)
    fig = new_figure(4.2 * panels, 4.4)
    axes = fig.subplots(1, panels, sharex=True, sharey=True, squeeze=False)[0]
    _draw_points(axes[0], x, lims, "C0")
    axes[0].set_title(title or f"samples ({len(x)})", fontsize=9)
    k = 1
    if ref is not None:
        _draw_points(axes[k], ref, lims, "0.3")
        axes[k].set_title(f"training data ({len(ref)})", fontsize=9)
        k += 1
    if log_density is not None:
        u, v = np.meshgrid(np.linspace(lims[0], lims[1], 200), np.linspace(lims[2], lims[3], 200))
        dens = np.exp(np.asarray(log_density(np.stack([u.ravel(), v.ravel()], 1)), dtype=np.float64))
        axes[k].imshow(dens.reshape(u.shape), origin="lower", extent=lims, cmap="Greys", interpolation="bilinear")
        axes[k].set_title("exact density p_0", fontsize=9)
    for ax in axes:
        ax.set_xlim(*lims[:2])
        ax.set_ylim(*lims[2:])
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


# --- likelihoods ---------------------------------------------------------------------------------------------------
def likelihood_figure(values: Any, unit: str = "bits/dim") -> Figure:
    """Histogram of per-example values (bits/dim or nats/dim) with the mean m and its standard error
    se = std(values, ddof=1) / sqrt(n) marked (a line at m, a band m +- se)."""
    v = _numpy(values, "values").astype(np.float64).ravel()
    if len(v) < 1 or not np.isfinite(v).all():
        raise ValueError(f"`values` must be finite, at least one; got {len(v)} values.")
    mean = float(v.mean())
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    fig = new_figure(6.0, 3.6)
    ax = fig.subplots()
    ax.hist(v, bins=int(np.clip(len(v) // 4, 5, 60)), color="0.7", edgecolor="0.4", linewidth=0.5)
    ax.axvline(mean, color="C3", lw=1.5, label=f"mean {mean:.4f} +- {se:.4f} (standard error, n = {len(v)})")
    if np.isfinite(se):
        ax.axvspan(mean - se, mean + se, color="C3", alpha=0.25, lw=0)
    ax.set_xlabel(f"{unit} per example")
    ax.set_ylabel("examples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _annotated_grid(ax: Any, images: np.ndarray, labels: Sequence[str], data: Any, title: str) -> None:
    s = _data_scaling(data)
    pixels = image_grid(images, data_scale=s["scale"], data_offset=s["offset"], scale=1, border=1)
    ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    h, w = images.shape[2:]
    cols = grid_layout(len(images))[1]
    for i, text in enumerate(labels):
        r, c = divmod(i, cols)
        ax.text(1 + c * (w + 1) - 0.5, 1 + r * (h + 1) + h - 0.6, text, fontsize=7, color="C1", va="bottom")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def save_likelihood_plots(
    out_dir: str | Path,
    values: Any,
    *,
    unit: str = "bits/dim",
    images: Any = None,
    data: Any = None,
    count: int = 9,
) -> list[Path]:
    """Write ``out_dir/likelihood.png`` (``likelihood_figure``) and, when ``images`` [N, C, H, W] (the examples
    behind ``values``, in the same order) are given, ``out_dir/best_worst.png``: the ``count`` best modelled (lowest
    value) and worst modelled (highest) images, each labelled with its value. Returns the paths written."""
    out = Path(out_dir)
    v = _numpy(values, "values").astype(np.float64).ravel()
    written = [out / "likelihood.png"]
    save_figure(likelihood_figure(v, unit), written[0])
    if images is not None:
        x = _numpy(images, "images")
        if len(x) != len(v) or x.ndim != 4:
            raise ValueError(f"`images` must be [N, C, H, W] with N = {len(v)} (one per value); got {list(x.shape)}.")
        k = max(1, min(int(count), len(v) // 2))
        order = np.argsort(v, kind="stable")
        fig = new_figure(8.4, 4.6)
        for ax, idx, name in zip(fig.subplots(1, 2), (order[:k], order[::-1][:k]), ("best", "worst"), strict=True):
            _annotated_grid(ax, x[idx], [f"{v[i]:.2f}" for i in idx], data,
                            f"{name} modelled: {unit} {v[idx].min():.2f} .. {v[idx].max():.2f}")
        fig.tight_layout()
        written.append(out / "best_worst.png")
        save_figure(fig, written[1])
    return written


# --- trajectories -------------------------------------------------------------------------------------------------
def save_trajectory(
    path: str | Path,
    frames: Sequence[Any],
    *,
    data: Any = None,
    max_frames: int = 10,
    scale: int | None = None,
) -> Path:
    """Write the denoised estimates x0_hat of a sampling run, ``frames[k]`` [B, *sample_shape] after step k.

    At most ``max_frames`` frames are kept, evenly spaced, always the first and the last. Images: one row (strip)
    per sample, one column per kept frame, left to right in sampling order (an ``image_grid`` with that many
    columns). 2-D points: the path of each sample in the plane, the last frame marked. .npy/.npz: every frame, stacked
    [S, B, *sample_shape]. The extension picks the format as in ``save_samples``.
    """
    path = Path(path)
    if len(frames) < 1:
        raise ValueError("`frames` must hold at least one array [B, *sample_shape]; got none.")
    stack = np.stack([_numpy(f, "frames[k]") for f in frames])  # [S, B, ...]; np.stack checks equal shapes
    suffix = output_format(path, stack.shape[2:], name="path")
    if suffix in ARRAY_FORMATS:
        payload = encode_arrays(stack, suffix)
        atomic_write(path, lambda tmp: tmp.write_bytes(payload))
        return path
    if isinstance(max_frames, bool) or int(max_frames) != max_frames or max_frames < 2:
        raise ValueError(f"`max_frames` must be an integer >= 2; got {max_frames!r}.")
    keep = np.unique(np.round(np.linspace(0, len(stack) - 1, min(len(stack), int(max_frames)))).astype(np.int64))
    stack = stack[keep]
    if stack.ndim == 5:
        strips = stack.swapaxes(0, 1).reshape(-1, *stack.shape[2:])  # sample-major: row b holds sample b's frames
        s = _data_scaling(data)
        grid = image_grid(strips, data_scale=s["scale"], data_offset=s["offset"], scale=scale, columns=len(keep))
        _save_pixels(grid, path, suffix)
        return path
    lims = _limits([stack.reshape(-1, 2)])
    fig = new_figure(4.8, 4.8)
    ax = fig.subplots()
    for b in range(stack.shape[1]):
        ax.plot(stack[:, b, 0], stack[:, b, 1], color="0.6", lw=0.6)
    ax.scatter(stack[-1, :, 0], stack[-1, :, 1], s=6, color="C3", zorder=3)
    ax.set_xlim(*lims[:2])
    ax.set_ylim(*lims[2:])
    ax.set_aspect("equal")
    ax.set_title(f"x0_hat, {len(frames)} frames ({len(keep)} shown), dots: the last", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return path
