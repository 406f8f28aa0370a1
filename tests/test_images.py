"""sdeflow.images and the runtime's numpy picture code: grid geometry and value mapping, PNG bytes decoded back,
one writer per extension, 2-D scatter, likelihood and trajectory pictures."""

from __future__ import annotations

import io
import math

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from sdeflow import images
from sdeflow.data import gmm_oracle, load_dataset
from sdeflow.export import runtime as rt

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode(path_or_bytes) -> np.ndarray:
    """PNG pixels as uint8 through Pillow (matplotlib.image.imread): an independent decoder."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    return np.round(mpimg.imread(src, format="png") * 255).astype(np.uint8)


# --- the grid ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("b, h, w", [(16, 8, 8), (64, 8, 8), (5, 8, 8), (3, 28, 20), (1, 4, 4)])
def test_default_grid_size_is_the_smallest_legible_one(b, h, w):
    """H_g = rows H s + (rows + 1) border, W_g likewise, s the smallest integer with a long side >= 512 px."""
    x = np.zeros((b, 1, h, w), np.float32)
    grid = rt.image_grid(x)
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)

    def size(s: int) -> tuple[int, int]:
        return rows * h * s + (rows + 1) * 2, cols * w * s + (cols + 1) * 2

    s = next(s for s in range(1, 1000) if max(size(s)) >= 512)
    assert grid.shape == size(s) and grid.dtype == np.uint8
    assert max(grid.shape) >= 512 and (s == 1 or max(size(s - 1)) < 512)


def test_sixteen_digits_are_522_px_square():
    """The documented example: 16 digits 8x8 -> a 4 x 4 grid, each digit upscaled 16x, 2-px borders."""
    assert rt.image_grid(load_dataset("digits", "test").x[:16].numpy()).shape == (522, 522)


def test_eight_bit_codes_come_back_exactly():
    """Bin centres x = scale (k + 1/2)/256 + offset of 8-bit data (any scaling) map back to the pixel values k."""
    k = np.arange(256).reshape(1, 1, 16, 16)
    for scale, offset in ((2.0, -1.0), (1.0, 0.0), (0.5, 3.0)):
        x = (scale * (k + 0.5) / 256 + offset).astype(np.float32)
        grid = rt.image_grid(x, data_scale=scale, data_offset=offset, scale=1, border=0)
        np.testing.assert_array_equal(grid, k[0, 0])


def test_values_mapped_back_through_the_data_scaling():
    """Digits bin centres x = 2 (k + 1/2)/17 - 1 come back as floor(256 (k + 1/2)/17), each pixel an s x s block."""
    data = load_dataset("digits", "test")
    x, codes = data.x[:6].numpy(), data.codes[:6, 0].numpy()
    s, bd = 3, 2
    grid = rt.image_grid(x, data_scale=data.scale, data_offset=data.offset, scale=s, border=bd)
    cols = 3
    for i in range(6):
        r, c = divmod(i, cols)
        top, left = bd + r * (8 * s + bd), bd + c * (8 * s + bd)
        cell = grid[top : top + 8 * s, left : left + 8 * s]
        expected = np.floor(256 * (codes[i] + 0.5) / 17).astype(np.uint8)
        np.testing.assert_array_equal(cell, np.kron(expected, np.ones((s, s), np.uint8)))


def test_any_data_scaling_and_clipping():
    """x = scale * y + offset with scale 4, offset -3: pixel = min(floor(256 clip(y, 0, 1)), 255)."""
    y = np.array([0.0, 0.25, 0.5, 1.0, -0.5, 2.0]).reshape(1, 1, 2, 3)
    grid = rt.image_grid(4 * y - 3, data_scale=4.0, data_offset=-3.0, scale=1, border=0)
    np.testing.assert_array_equal(grid, [[0, 64, 128], [255, 0, 255]])


def test_borders_and_empty_cells_have_the_border_value():
    x = np.full((5, 1, 4, 4), 1.0, np.float32)  # white images: every non-white pixel is border
    grid = rt.image_grid(x, scale=2, border=3, border_value=77)
    assert grid.shape == (2 * 8 + 3 * 3, 3 * 8 + 4 * 3)  # 5 images -> 3 columns, 2 rows
    cell = np.zeros(grid.shape, bool)
    for i in range(5):
        r, c = divmod(i, 3)
        cell[3 + r * 11 : 3 + r * 11 + 8, 3 + c * 11 : 3 + c * 11 + 8] = True
    assert (grid[cell] == 255).all() and (grid[~cell] == 77).all()  # borders and the sixth (empty) cell


def test_rgb_grid_keeps_the_channels():
    x = np.zeros((2, 3, 2, 2), np.float32) - 1
    x[:, 0] = 1.0  # pure red in [-1, 1]
    grid = rt.image_grid(x, scale=1, border=1, border_value=0)
    assert grid.shape == (4, 7, 3)
    np.testing.assert_array_equal(grid[1, 1], [255, 0, 0])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"scale": 0}, "`scale` must be an integer >= 1"), ({"border": -1}, "`border` must be an integer >= 0"),
     ({"data_scale": 0.0}, "scale > 0"), ({"columns": 0}, "`columns` must be an integer >= 1")],
)
def test_grid_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rt.image_grid(np.zeros((2, 1, 4, 4)), **kwargs)


def test_grid_rejects_non_images_and_nan():
    with pytest.raises(ValueError, match=r"shape \[B, C, H, W\] with B >= 1 and C = 1 or 3; got \[4, 2\]"):
        rt.image_grid(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        rt.image_grid(np.array([[[[0.0, np.nan]]]]))


# --- PNG bytes ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 3)])
def test_png_encoder_round_trips_through_an_independent_decoder(shape):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = rt.encode_png(pixels)
    assert data[:8] == PNG_SIGNATURE
    np.testing.assert_array_equal(_decode(data), pixels)


def test_points_raster_uses_equal_axes():
    """A wide point set keeps its aspect: the x extent fills the frame, the y extent a tenth of it."""
    img = rt.points_raster(np.array([[0.0, 0.0], [10.0, 1.0]]), size=200, dot=1)
    rows, cols = np.nonzero(img == 40)
    assert img.shape == (200, 200) and len(rows) == 2
    assert abs((rows.max() - rows.min()) * 10 - (cols.max() - cols.min())) <= 10
    assert rows[np.argmax(cols)] < rows[np.argmin(cols)]  # y points up: the right point (y = 1) is higher


# --- the one writer -------------------------------------------------------------------------------------------------
def test_array_formats_load_back(tmp_path):
    x = torch.randn(5, 3)
    images.save_samples(tmp_path / "a.npy", x)
    images.save_samples(tmp_path / "a.npz", x)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), x.numpy())
    with np.load(tmp_path / "a.npz") as f:
        np.testing.assert_array_equal(f["samples"], x.numpy())


def test_picture_formats_are_what_the_extension_says(tmp_path):
    data = load_dataset("digits", "test")
    for suffix in (".png", ".pdf", ".svg", ".PNG"):
        images.save_samples(tmp_path / f"g{suffix}", data.x[:16], data=data.info)
    assert _decode(tmp_path / "g.png").shape == (522, 522)
    assert (tmp_path / "g.PNG").read_bytes()[:8] == PNG_SIGNATURE
    assert (tmp_path / "g.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (tmp_path / "g.svg").read_bytes()[:2000]
    np.testing.assert_array_equal(_decode(tmp_path / "g.png"), rt.image_grid(data.x[:16].numpy()))


def test_scale_override(tmp_path):
    images.save_samples(tmp_path / "g.png", np.zeros((4, 1, 8, 8)), scale=3)
    assert _decode(tmp_path / "g.png").shape == (2 * 24 + 6, 2 * 24 + 6)


def test_unknown_extension_names_the_supported_ones(tmp_path):
    with pytest.raises(ValueError, match=r"must end in one of .npy, .npz, .png, .pdf, .svg.*got 'a.jpg'"):
        images.save_samples(tmp_path / "a.jpg", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"No picture for samples of shape \[3\]"):
        images.save_samples(tmp_path / "a.png", np.zeros((2, 3)))
    assert not any(tmp_path.iterdir())


def test_failed_write_leaves_the_old_file(tmp_path):
    out = tmp_path / "g.png"
    out.write_bytes(b"old")
    with pytest.raises(ValueError, match="NaN"):
        images.save_samples(out, np.full((2, 1, 4, 4), np.nan))
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]


def test_scatter_beside_training_data_and_oracle_density(tmp_path):
    moons = load_dataset("moons")
    images.save_samples(tmp_path / "m.png", moons.x[:300], reference=moons.x)
    assert _decode(tmp_path / "m.png").shape[:2] == (528, 1008)  # two 4.2 x 4.4 in panels at 120 dpi
    gm = gmm_oracle()
    fig = images.scatter_figure(gm.sample(3000, generator=torch.Generator().manual_seed(0)),
                                log_density=lambda p: gm.log_prob(torch.from_numpy(p)).numpy())
    left, right = fig.axes
    assert left.get_aspect() == right.get_aspect() == 1.0  # equal axes
    assert left.get_xlim() == right.get_xlim() and left.get_ylim() == right.get_ylim()
    density = right.get_images()[0].get_array()
    # the density peaks at the most concentrated component, the isotropic one (cov 0.04 I) at (-1, 1)
    iy, ix = np.unravel_index(np.argmax(density), density.shape)
    x0, x1 = right.get_xlim()
    y0, y1 = right.get_ylim()
    peak = np.array([x0 + (ix + 0.5) * (x1 - x0) / 200, y0 + (iy + 0.5) * (y1 - y0) / 200])
    assert np.abs(peak - np.array([-1.0, 1.0])).max() < 0.1
    assert len(left.collections) == 1 and left.collections[0].get_array() is not None  # 3000 > 2000: a histogram


def test_likelihood_figure_marks_mean_and_standard_error():
    v = np.random.default_rng(1).normal(1.5, 0.2, 40)
    fig = images.likelihood_figure(v)
    ax = fig.axes[0]
    se = v.std(ddof=1) / np.sqrt(40)
    assert ax.get_legend().get_texts()[0].get_text() == f"mean {v.mean():.4f} +- {se:.4f} (standard error, n = 40)"
    band = ax.patches[-1].get_path().transformed(ax.patches[-1].get_patch_transform()).vertices  # mean +- se
    np.testing.assert_allclose([band[:, 0].min(), band[:, 0].max()], [v.mean() - se, v.mean() + se])


def test_likelihood_plots_pick_best_and_worst(tmp_path):
    data = load_dataset("digits", "test")
    v = np.arange(20, dtype=float)[::-1]  # example i has value 19 - i: the best are the last ones
    written = images.save_likelihood_plots(tmp_path, v, images=data.x[:20], data=data, count=4)
    assert [p.name for p in written] == ["likelihood.png", "best_worst.png"]
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in written)
    with pytest.raises(ValueError, match="one per value"):
        images.save_likelihood_plots(tmp_path, v, images=data.x[:5])


def test_trajectory_strips_one_row_per_sample(tmp_path):
    """Frame k of sample b is cell (b, k); 25 frames thin to 10, first and last kept."""
    rng = np.random.default_rng(0)
    frames = [rng.uniform(-1, 1, (3, 1, 4, 4)).astype(np.float32) for _ in range(25)]
    path = images.save_trajectory(tmp_path / "t.png", frames, scale=2)
    grid = _decode(path)
    assert grid.shape == (3 * 8 + 4 * 2, 10 * 8 + 11 * 2)
    for b in range(3):
        for col, k in ((0, 0), (9, 24)):
            top, left = 2 + b * 10, 2 + col * 10
            cell = grid[top : top + 8 : 2, left : left + 8 : 2]
            np.testing.assert_array_equal(cell, rt.to_pixels(frames[k][b, 0]))
    images.save_trajectory(tmp_path / "t.npy", frames)
    assert np.load(tmp_path / "t.npy").shape == (25, 3, 1, 4, 4)
    images.save_trajectory(tmp_path / "t2.svg", [rng.standard_normal((5, 2)) for _ in range(4)])
    assert b"<svg" in (tmp_path / "t2.svg").read_bytes()[:2000]
    with pytest.raises(ValueError, match="at least one array"):
        images.save_trajectory(tmp_path / "t.png", [])
