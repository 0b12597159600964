"""The embedded digits (split, values, resizing) and colour palettes (k-means, tokens, files)."""

import os

import numpy as np
import pytest

from genvis.data import digits, palette
from genvis.errors import UserError

GREY_VALUES = np.arange(17, dtype=np.float32) / 8 - 1


def test_digits_split_sizes_cover_the_dataset_without_overlap():
  train_images, train_labels = digits.load_digits("train")
  test_images, test_labels = digits.load_digits("test")
  assert train_images.shape == (1352, 8, 8, 1) and train_labels.shape == (1352,)
  assert test_images.shape == (445, 8, 8, 1) and test_labels.shape == (445,)
  _, labels = digits._raw_digits()  # pylint: disable=protected-access
  train_rows = digits.split_indices(labels, "train", seed=0)
  test_rows = digits.split_indices(labels, "test", seed=0)
  assert not set(train_rows) & set(test_rows)
  assert sorted([*train_rows, *test_rows]) == list(range(1797))


def test_digits_split_is_deterministic_and_the_seed_selects_it():
  first, first_labels = digits.load_digits("test", seed=0)
  again, again_labels = digits.load_digits("test", seed=0)
  np.testing.assert_array_equal(first, again)
  np.testing.assert_array_equal(first_labels, again_labels)
  other, other_labels = digits.load_digits("test", seed=1)
  assert other.shape == first.shape and not np.array_equal(other, first)
  np.testing.assert_array_equal(np.bincount(other_labels), np.bincount(first_labels))


def test_digits_split_is_stratified():
  _, train_labels = digits.load_digits("train")
  _, test_labels = digits.load_digits("test")
  train_counts = np.bincount(train_labels, minlength=10)
  test_counts = np.bincount(test_labels, minlength=10)
  assert np.all(train_counts > 0) and np.all(test_counts > 0)
  totals = train_counts + test_counts
  np.testing.assert_array_equal(test_counts, totals // 4)
  np.testing.assert_array_equal(test_counts, [44, 45, 44, 45, 45, 45, 45, 44, 43, 45])
  assert np.all(np.abs(test_counts / totals - 0.25) < 1 / totals)


def test_digits_values_are_the_17_grey_levels_in_minus_one_one():
  images, labels = digits.load_digits("train")
  assert images.dtype == np.float32 and labels.dtype == np.int32
  assert images.min() == -1.0 and images.max() == 1.0
  np.testing.assert_array_equal(np.unique(images), GREY_VALUES)
  np.testing.assert_array_equal(np.unique(labels), np.arange(10))


def test_digits_resize_shapes_and_values():
  native, _ = digits.load_digits("test")
  same, _ = digits.load_digits("test", size=8)
  np.testing.assert_array_equal(same, native)
  square, _ = digits.load_digits("test", size=16)
  assert square.shape == (445, 16, 16, 1) and square.dtype == np.float32
  assert set(np.unique(square)) <= set(GREY_VALUES)  # nearest keeps the grey levels
  np.testing.assert_array_equal(square[:, ::2, ::2], native)  # 2x nearest repeats pixels
  wide, _ = digits.load_digits("test", size=(4, 12), method="bilinear")
  assert wide.shape == (445, 4, 12, 1)
  assert wide.min() >= -1.0 and wide.max() <= 1.0


@pytest.mark.parametrize("kwargs, name", [
    ({"split": "val"}, "split='val'"),
    ({"size": 0}, "size=0"),
    ({"size": (8,)}, r"size=\(8,\)"),
    ({"size": (8, -1)}, r"size=\(8, -1\)"),
    ({"size": "16"}, "size='16'"),
    ({"size": True}, "size=True"),
    ({"method": "cubic"}, "method='cubic'"),
])
def test_digits_bad_arguments_name_the_argument(kwargs, name):
  with pytest.raises(UserError, match=name) as error:
    digits.load_digits(**kwargs)
  assert "\n" not in str(error.value)


def test_quantize_dequantize_round_trips_palette_colours_exactly():
  rng = np.random.default_rng(0)
  colours = rng.uniform(-1, 1, size=(64, 3)).astype(np.float32)
  tokens = rng.integers(0, 64, size=(5, 6, 7)).astype(np.int32)
  images = colours[tokens]
  for chunk in (palette.CHUNK, 11):  # one call, and many calls with a padded last chunk
    found = palette.quantize(images, colours, chunk=chunk)
    assert found.dtype == np.int32 and found.shape == (5, 6, 7)
    np.testing.assert_array_equal(found, tokens)
  decoded = np.asarray(palette.dequantize(found, colours))
  assert decoded.dtype == np.float32
  np.testing.assert_array_equal(decoded, images)
  with pytest.raises(UserError, match=r"quantize images has shape \(5, 6, 7, 2\)"):
    palette.quantize(images[..., :2], colours)


def test_quantize_picks_the_nearest_colour():
  colours = np.array([[-1.0], [0.0], [1.0]], np.float32)
  pixels = np.array([[-0.9], [-0.4], [0.3], [0.6], [2.0]], np.float32)
  np.testing.assert_array_equal(palette.quantize(pixels, colours), [0, 1, 1, 2, 2])


def test_kmeans_recovers_well_separated_centres():
  rng = np.random.default_rng(1)
  centres = np.array([[-0.8, -0.8, -0.8], [-0.8, 0.7, 0.1], [0.0, 0.0, 0.9],
                      [0.6, -0.5, 0.0], [0.8, 0.8, -0.7]], np.float32)
  pixels = centres[rng.integers(0, 5, size=2000)] + rng.normal(0, 0.02, (2000, 3))
  found = palette.fit_palette(pixels.astype(np.float32), num_colors=5, seed=0, iters=10)
  assert found.shape == (5, 3) and found.dtype == np.float32
  nearest = palette.quantize(centres, found)  # each true centre's fitted colour
  assert sorted(nearest) == list(range(5))  # one fitted colour per true centre
  np.testing.assert_allclose(found[nearest], centres, atol=0.01)


def test_kmeans_is_deterministic_for_a_seed():
  pixels = np.random.default_rng(2).uniform(-1, 1, size=(3000, 3)).astype(np.float32)
  first = palette.fit_palette(pixels, num_colors=16, seed=3, iters=5)
  np.testing.assert_array_equal(first, palette.fit_palette(pixels, num_colors=16, seed=3,
                                                           iters=5))
  assert not np.array_equal(first, palette.fit_palette(pixels, num_colors=16, seed=4, iters=5))
  np.testing.assert_array_equal(first, first[np.lexsort(first.T[::-1])])


def test_kmeans_reseeds_empty_clusters_and_survives_few_distinct_colours():
  points = np.array([[0.0], [0.1], [0.9], [1.0]], np.float32)
  weights = np.ones(4, np.float32)
  centres = np.array([[0.05], [0.95], [5.0]], np.float32)  # the last attracts no point
  lloyd_step = palette._lloyd_step  # pylint: disable=protected-access
  updated = np.asarray(lloyd_step(points, weights, centres, chunk=2))
  np.testing.assert_allclose(updated[:2], [[0.05], [0.95]], atol=1e-6)
  assert updated[2, 0] in points[:, 0]  # re-seeded on a data point, not left at 5.0
  # Three distinct values, five colours: finite, and every value is a colour.
  pixels = np.repeat(np.array([[-1.0], [0.0], [1.0]], np.float32), 10, axis=0)
  found = palette.fit_palette(pixels, num_colors=5, seed=0, iters=3)
  assert np.all(np.isfinite(found)) and {-1.0, 0.0, 1.0} <= set(found[:, 0])


@pytest.mark.parametrize("kwargs, name", [
    ({"pixels": np.zeros(10, np.float32)}, r"pixels has shape \(10,\)"),
    ({"num_colors": 11}, "num_colors=11"),
    ({"num_colors": 0}, "num_colors=0"),
    ({"iters": -1}, "iters=-1"),
])
def test_fit_palette_bad_arguments_name_the_argument(kwargs, name):
  arguments = {"pixels": np.zeros((10, 1), np.float32), "num_colors": 2, **kwargs}
  with pytest.raises(UserError, match=name):
    palette.fit_palette(**arguments)


def test_grey_levels_palette_round_trips_digits_exactly():
  grey = palette.grey_levels_palette()
  assert grey.shape == (17, 1) and grey.dtype == np.float32
  np.testing.assert_array_equal(grey[:, 0], GREY_VALUES)
  for split in ("train", "test"):
    images, _ = digits.load_digits(split)
    tokens = palette.quantize(images, grey)
    assert tokens.shape == images.shape[:-1] and tokens.min() == 0 and tokens.max() == 16
    np.testing.assert_array_equal(np.asarray(palette.dequantize(tokens, grey)), images)
    np.testing.assert_array_equal(tokens, np.rint((images[..., 0] + 1) * 8))  # id = level


@pytest.mark.parametrize("suffix", [".npy", ".json"])
def test_save_load_round_trip(tmp_path, suffix):
  colours = np.random.default_rng(3).uniform(-1, 1, size=(512, 3)).astype(np.float32)
  path = str(tmp_path / "ckpt" / f"palette{suffix}")
  palette.save_palette(path, colours)
  assert os.listdir(tmp_path / "ckpt") == [f"palette{suffix}"]  # no temporary left behind
  loaded = palette.load_palette(path)
  assert loaded.dtype == np.float32
  np.testing.assert_array_equal(loaded, colours)


def test_load_palette_bad_files_name_the_path(tmp_path):
  missing = str(tmp_path / "missing.npy")
  with pytest.raises(UserError, match=f"palette file '{missing}': no such file"):
    palette.load_palette(missing)
  corrupt = tmp_path / "corrupt.npy"
  corrupt.write_bytes(b"not a numpy file")
  with pytest.raises(UserError, match=f"palette file '{corrupt}' is not a readable palette"):
    palette.load_palette(str(corrupt))
  for name, text in [("truncated.json", '{"palette": [[0.1], '), ("nokey.json", '{"x": 1}'),
                     ("ragged.json", '{"palette": [[0.1], [0.2, 0.3]]}')]:
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=f"palette file '{tmp_path / name}'") as error:
      palette.load_palette(str(tmp_path / name))
    assert "\n" not in str(error.value)
  flat = tmp_path / "flat.npy"
  np.save(flat, np.zeros(4, np.float32))
  with pytest.raises(UserError, match=r"flat.npy' has shape \(4,\)"):
    palette.load_palette(str(flat))
  with pytest.raises(UserError, match="expected a name ending in .npy or .json"):
    palette.save_palette(str(tmp_path / "palette.txt"), np.zeros((2, 1), np.float32))
