"""Tests for the image sources (digits, scenes, tfds, folder) and their shared preprocessing.

Offline: tfds datasets are `tfds.testing.mock_data` over metadata written into a temporary
data dir; folders are PNG/JPEG/GIF files written with PIL into tmp_path.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error
from genvis.data import digits, image_preprocess, image_sources, scenes, tfds_text
from genvis.errors import UserError

_TFDS_SPLITS = {"mnist": ("train", "test"), "cifar10": ("train", "test"),
                "celeb_a": ("train", "validation", "test"),
                "imagenet2012": ("train", "validation", "test"),
                "coco_captions": ("train", "val", "test", "restval")}


def _config(**overrides):
  config = image_sources.image_data_defaults()
  config.update(overrides)
  return config


@pytest.mark.parametrize("key,source", [
    ("folder", "digits"), ("folder", "tfds"), ("tfds_data_dir", "digits"),
    ("tfds_name", "scenes"), ("tfds_image_key", "folder"), ("tfds_label_key", "digits"),
    ("tfds_caption_key", "scenes"),
])
def test_a_key_only_another_source_reads_is_refused_not_ignored(key, source):
  """data.folder with the digits source used to train on the digits, silently."""
  owner = "folder" if key == "folder" else "tfds"
  for load in (lambda c: image_sources.load_image_dataset(c, "train"),
               lambda c: image_sources.scenes_attribute_labels(c, "train")):
    with pytest.raises(UserError) as excinfo:
      load(_config(source=source, **{key: "x"}))
    assert_one_line_error(excinfo, f"config.data.{key}='x'", f"config.data.source={source!r}",
                          f"--config.data.source={owner}")


# ---------------------------------------------------------------------------- preprocessing
def test_to_unit_range_maps_the_uint8_endpoints_to_plus_minus_one():
  values = image_preprocess.to_unit_range(np.array([0, 1, 254, 255], np.uint8))
  assert values.dtype == np.float32
  np.testing.assert_array_equal(values[[0, 3]], [-1.0, 1.0])
  np.testing.assert_allclose(values[[1, 2]], [1 / 127.5 - 1, 254 / 127.5 - 1], atol=1e-7)
  with pytest.raises(UserError):
    image_preprocess.to_unit_range(np.zeros(3, np.float32))


@pytest.mark.parametrize("tall", [False, True])
def test_center_crop_keeps_a_centred_edge_centred(tall):
  # Black left half, white right half, twice as wide as high: the centre square holds the
  # edge in its middle, so the result is black/white mirror-symmetric about its centre.
  image = np.zeros((20, 40, 1), np.uint8)
  image[:, 20:] = 255
  if tall:
    image = image.transpose(1, 0, 2)
  out = image_preprocess.resize_and_center_crop(image, 10)
  assert out.shape == (10, 10, 1) and out.dtype == np.uint8
  rows = out[..., 0].T if tall else out[..., 0]
  np.testing.assert_array_equal(rows[:, :4], 0)
  np.testing.assert_array_equal(rows[:, 6:], 255)
  np.testing.assert_allclose(rows.astype(int) + rows[:, ::-1], 255, atol=1)


def test_resize_keeps_a_flat_colour_and_sets_channels():
  rgb = np.zeros((7, 11, 3), np.uint8)
  rgb[...] = (200, 40, 10)
  out = image_preprocess.resize_and_center_crop(rgb, 4)
  assert out.shape == (4, 4, 3)
  np.testing.assert_array_equal(out, np.broadcast_to([200, 40, 10], (4, 4, 3)))
  grey = image_preprocess.resize_and_center_crop(rgb, 4, channels=1)
  luma = round(0.299 * 200 + 0.587 * 40 + 0.114 * 10)
  assert grey.shape == (4, 4, 1) and abs(int(grey[0, 0, 0]) - luma) <= 1
  as_rgb = image_preprocess.resize_and_center_crop(np.full((5, 5, 1), 77, np.uint8), 0, 3)
  np.testing.assert_array_equal(as_rgb, np.full((5, 5, 3), 77))


def test_transparent_pixels_become_white():
  rgba = np.zeros((6, 6, 4), np.uint8)  # Black, fully transparent...
  rgba[:3, :, :] = (10, 20, 30, 255)  # ...except an opaque top half.
  out = image_preprocess.resize_and_center_crop(rgba, 0)
  assert out.shape == (6, 6, 3)
  np.testing.assert_array_equal(out[:3], np.broadcast_to([10, 20, 30], (3, 6, 3)))
  np.testing.assert_array_equal(out[3:], 255)


def _batch(size=16, side=6):
  return np.random.default_rng(0).uniform(-1, 1, (size, side, side, 3)).astype(np.float32)


def test_augment_is_a_pure_function_of_the_key():
  images = _batch()
  first = image_preprocess.augment(images, (3, 7), flip=True, random_crop_padding=2)
  again = image_preprocess.augment(images, (3, 7), flip=True, random_crop_padding=2)
  other = image_preprocess.augment(images, (3, 8), flip=True, random_crop_padding=2)
  np.testing.assert_array_equal(first, again)
  assert first.shape == images.shape and first.dtype == np.float32
  assert not np.array_equal(first, other)
  # A host holding rows 4..7 of the global batch gets the same rows.
  part = image_preprocess.augment(images[4:8], (3, 7), flip=True, random_crop_padding=2,
                                  row_ids=np.arange(4, 8))
  np.testing.assert_array_equal(part, first[4:8])


def test_flip_is_an_exact_mirror_of_about_half_the_rows():
  images = _batch(size=32)
  out = image_preprocess.augment(images, (0, 1), flip=True)
  same = [np.array_equal(o, i) for o, i in zip(out, images)]
  mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
  assert all(s != m for s, m in zip(same, mirrored))  # Each row is one or the other.
  assert 8 <= sum(mirrored) <= 24
  np.testing.assert_array_equal(image_preprocess.augment(images, (0, 1), flip=False), images)


def test_random_crop_is_a_window_of_the_reflect_padded_image():
  images = _batch(size=8)
  out = image_preprocess.augment(images, (5,), flip=False, random_crop_padding=2)
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
  offsets = set()
  for row in range(8):
    hits = [(dy, dx) for dy in range(5) for dx in range(5)
            if np.array_equal(out[row], padded[row, dy:dy + 6, dx:dx + 6])]
    assert hits, row
    offsets.add(hits[0])
  assert len(offsets) > 1
  with pytest.raises(UserError, match="random_crop_padding"):
    image_preprocess.augment(images, (5,), flip=False, random_crop_padding=6)


# -------------------------------------------------------------------------- digits, scenes
def test_digits_match_load_digits():
  dataset = image_sources.load_image_dataset(_config(resolution=16), "test")
  images, labels = digits.load_digits("test", size=16, seed=0)
  np.testing.assert_array_equal(dataset.images, images)
  np.testing.assert_array_equal(dataset.labels, labels)
  assert dataset.labels.dtype == np.int32 and dataset.num_classes == 10
  capped = image_sources.load_image_dataset(
      ml_collections.ConfigDict(_config(max_examples=5, channels=3)), "train")
  train_images, _ = digits.load_digits("train")
  assert capped.images.shape == (5, 8, 8, 3)
  np.testing.assert_array_equal(capped.images[..., 2], train_images[:5, ..., 0])


def test_scenes_match_make_scenes_per_split():
  config = _config(source="scenes", resolution=16, scenes_train=6, scenes_test=4,
                   scenes_heldout=3, dataset_seed=2)
  train = image_sources.load_image_dataset(config, "train")
  expected = scenes.make_scenes(6, seed=2, split="train", resolution=16)
  np.testing.assert_array_equal(train.images, expected["images"])
  assert train.captions == expected["captions"]
  np.testing.assert_array_equal(train.labels, expected["labels"]["shape"][:, 0])
  assert train.num_classes == len(scenes.SHAPES)
  test = image_sources.load_image_dataset(config, "test")
  expected_test = scenes.make_scenes(4, seed=2, split="train", resolution=16,
                                     start=image_sources.SCENES_TEST_START)
  np.testing.assert_array_equal(test.images, expected_test["images"])
  assert not np.array_equal(test.images, train.images[:4])
  heldout = image_sources.load_image_dataset(config, "heldout")
  expected_heldout = scenes.make_scenes(3, seed=2, split="heldout", resolution=16)
  assert heldout.captions == expected_heldout["captions"] and len(heldout) == 3


def test_scenes_attribute_labels_match_each_split_and_max_examples():
  config = _config(source="scenes", resolution=8, scenes_train=5, scenes_test=4,
                   scenes_heldout=3, scenes_max_objects=2, dataset_seed=4, max_examples=3,
                   scenes_label="position")
  cases = (("train", "train", 0), ("test", "train", image_sources.SCENES_TEST_START),
           ("heldout", "heldout", 0))
  for split, sequence, start in cases:
    labels = image_sources.scenes_attribute_labels(config, split)
    expected = scenes.make_scenes(3, seed=4, split=sequence, resolution=8, max_objects=2,
                                  start=start)["labels"]
    assert set(labels) == set(expected), split
    for name, values in expected.items():
      np.testing.assert_array_equal(labels[name], values, err_msg=f"{split} {name}")
    dataset = image_sources.load_image_dataset(config, split)
    np.testing.assert_array_equal(labels["position"][:, 0], dataset.labels)
  with pytest.raises(UserError, match="config.data.source='digits'"):
    image_sources.scenes_attribute_labels(_config(), "test")
  with pytest.raises(UserError, match="split 'val'"):
    image_sources.scenes_attribute_labels(config, "val")
  with pytest.raises(UserError, match="scenes_heldout=0"):
    image_sources.scenes_attribute_labels(dict(config, scenes_heldout=0), "heldout")


def test_config_mistakes_name_the_key():
  with pytest.raises(UserError) as excinfo:
    image_sources.load_image_dataset(_config(source="foo"), "train")
  assert_one_line_error(excinfo, "config.data.source='foo'", "digits, scenes, tfds or folder")
  with pytest.raises(UserError, match="config.data.channels=2"):
    image_sources.load_image_dataset(_config(channels=2), "train")
  with pytest.raises(UserError, match="config.data.resolution=-1"):
    image_sources.load_image_dataset(_config(resolution=-1), "train")
  with pytest.raises(UserError, match="split 'heldout'"):
    image_sources.load_image_dataset(_config(), "heldout")
  with pytest.raises(UserError, match="config.data.scenes_label='hue'"):
    image_sources.load_image_dataset(_config(source="scenes", scenes_label="hue"), "train")


# ---------------------------------------------------------------------------------- folder
# (relative path, size (w, h), PIL mode, colour); every file is one flat colour, so its
# resized pixels are exactly that colour and the alignment of images, labels and captions
# can be checked.
_FILES = [
    ("cat/a.png", (30, 20), "RGB", (200, 30, 30)),
    ("cat/b.png", (16, 16), "RGBA", (0, 0, 0, 0)),  # Fully transparent: white.
    ("dog/c.gif", (12, 18), "P", None),
    ("dog/d.png", (24, 24), "L", 90),
    ("dog/sub/e.bmp", (10, 10), "RGB", (10, 200, 10)),
]
_EXPECTED_RGB = [(200, 30, 30), (255, 255, 255), (0, 0, 255), (90, 90, 90), (10, 200, 10)]


def _write_image(path, size, mode, colour):
  path.parent.mkdir(parents=True, exist_ok=True)
  if mode == "P":  # A palette image whose only colour is blue.
    image = Image.new("RGB", size, (0, 0, 255)).convert("P")
  else:
    image = Image.new(mode, size, colour)
  image.save(path)


@pytest.fixture(name="photo_folder")
def fixture_photo_folder(tmp_path):
  for relative, size, mode, colour in _FILES:
    _write_image(tmp_path / relative, size, mode, colour)
  (tmp_path / ".hidden.png").write_bytes(b"not an image")  # Skipped: hidden.
  (tmp_path / "notes.txt").write_text("skipped: not an image")
  lines = [json.dumps({"file": relative, "caption": f"caption of {relative}"})
           for relative, *_ in reversed(_FILES)]
  (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n\n")
  return tmp_path


def test_folder_images_labels_and_captions_are_aligned(photo_folder):
  dataset = image_sources.load_image_dataset(
      _config(source="folder", folder=str(photo_folder), folder_labels=True, resolution=8),
      "train")
  assert dataset.images.shape == (5, 8, 8, 3) and dataset.images.dtype == np.float32
  for image, rgb in zip(dataset.images, _EXPECTED_RGB):
    np.testing.assert_allclose(image, np.broadcast_to(np.array(rgb) / 127.5 - 1, image.shape),
                               atol=1e-6)
  assert dataset.class_names == ("cat", "dog") and dataset.num_classes == 2
  np.testing.assert_array_equal(dataset.labels, [0, 0, 1, 1, 1])
  assert dataset.labels.dtype == np.int32
  assert dataset.captions == [f"caption of {relative}" for relative, *_ in _FILES]


def test_folder_of_grey_images_stays_grey_and_native_sizes_must_agree(tmp_path):
  for name in ("a.png", "b.png"):
    _write_image(tmp_path / name, (6, 4), "L", 40)
  dataset = image_sources.load_image_dataset(_config(source="folder", folder=str(tmp_path)),
                                             "train")
  assert dataset.images.shape == (2, 4, 6, 1) and dataset.labels is None
  assert dataset.captions is None
  _write_image(tmp_path / "c.png", (5, 5), "L", 40)
  with pytest.raises(UserError) as excinfo:
    image_sources.load_image_dataset(_config(source="folder", folder=str(tmp_path)), "train")
  assert_one_line_error(excinfo, "c.png", "5x5", "4x6", "a.png", "config.data.resolution")


@pytest.mark.parametrize("line, fragment", [
    ("{not json", "not valid JSON"),
    ('{"file": "cat/a.png"}', '"caption"'),
    ('{"file": "cat/zzz.png", "caption": "x"}', "not an image file"),
    ('{"file": "cat/a.png", "caption": "again"}', "already has a caption (line 1)"),
])
def test_bad_captions_line_names_the_file_and_line(photo_folder, line, fragment):
  path = photo_folder / "captions.jsonl"
  path.write_text(json.dumps({"file": "cat/a.png", "caption": "ok"}) + "\n" + line + "\n")
  with pytest.raises(UserError) as excinfo:
    image_sources.load_image_dataset(_config(source="folder", folder=str(photo_folder)),
                                     "train")
  assert_one_line_error(excinfo, f"{path}:2", fragment)


def test_images_without_captions_are_an_error(photo_folder):
  path = photo_folder / "captions.jsonl"
  path.write_text(json.dumps({"file": "cat/a.png", "caption": "ok"}) + "\n")
  with pytest.raises(UserError) as excinfo:
    image_sources.load_image_dataset(_config(source="folder", folder=str(photo_folder)),
                                     "train")
  assert_one_line_error(excinfo, str(path), "no caption for 4 of the 5", "cat/b.png")


def test_missing_empty_and_unsplit_folders(tmp_path, photo_folder):
  with pytest.raises(UserError) as excinfo:
    image_sources.load_image_dataset(_config(source="folder", folder=str(tmp_path / "x")),
                                     "train")
  assert_one_line_error(excinfo, f"config.data.folder='{tmp_path / 'x'}'", "no such directory")
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="holds no images"):
    image_sources.load_image_dataset(
        _config(source="folder", folder=str(tmp_path / "empty")), "train")
  with pytest.raises(UserError) as excinfo:
    image_sources.load_image_dataset(_config(source="folder", folder=str(photo_folder)),
                                     "test")
  assert_one_line_error(excinfo, "no 'test'/ subfolder", "folder_test_fraction")


def test_split_subfolders_share_class_ids(tmp_path):
  for relative in ("train/b/1.png", "train/b/2.png", "train/a/3.png", "test/b/4.png"):
    _write_image(tmp_path / relative, (4, 4), "RGB", (1, 2, 3))
  config = _config(source="folder", folder=str(tmp_path), folder_labels=True)
  train = image_sources.load_image_dataset(config, "train")
  test = image_sources.load_image_dataset(config, "test")
  assert len(train) == 3 and len(test) == 1
  assert train.class_names == test.class_names == ("a", "b")
  np.testing.assert_array_equal(train.labels, [0, 1, 1])
  np.testing.assert_array_equal(test.labels, [1])
  with pytest.raises(UserError, match="no 'validation'/ subfolder"):
    image_sources.load_image_dataset(config, "validation")


def test_train_and_test_of_different_sizes_are_one_line_error(tmp_path):
  _write_image(tmp_path / "train/1.png", (4, 4), "RGB", (1, 2, 3))
  _write_image(tmp_path / "test/2.png", (6, 6), "RGB", (1, 2, 3))
  config = _config(source="folder", folder=str(tmp_path))
  with pytest.raises(UserError, match=r"test images are \[6, 6, 3\], training images "
                     r"\[4, 4, 3\]") as excinfo:
    image_sources.load_train_test(config)
  assert_one_line_error(excinfo)
  train, test = image_sources.load_train_test(_config(source="folder", folder=str(tmp_path),
                                                      resolution=4))
  assert train.images.shape[1:] == test.images.shape[1:] == (4, 4, 3)


def test_automatic_channels_are_decided_over_every_split_of_the_folder(tmp_path):
  for i in range(3):
    _write_image(tmp_path / f"train/{i}.png", (8, 8), "L", 40 * i)
    _write_image(tmp_path / f"test/{i}.png", (8, 8), "L", 40 * i)
  config = _config(source="folder", folder=str(tmp_path), resolution=8)
  train, test = image_sources.load_train_test(config)
  assert train.images.shape[-1] == test.images.shape[-1] == 1  # all grey: grey
  _write_image(tmp_path / "test/rgb.png", (8, 8), "RGB", (200, 30, 30))
  train, test = image_sources.load_train_test(config)  # one colour image, in test only
  assert train.images.shape == (3, 8, 8, 3) and test.images.shape == (4, 8, 8, 3)
  np.testing.assert_array_equal(train.images[..., 0], train.images[..., 2])  # grey as RGB


def test_hash_split_is_deterministic_and_partitions_the_folder(tmp_path):
  for i in range(20):
    Image.new("L", (3, 3), i * 10).save(tmp_path / f"{i:02d}.png")
  config = _config(source="folder", folder=str(tmp_path), folder_test_fraction=0.3)
  train = image_sources.load_image_dataset(config, "train")
  test = image_sources.load_image_dataset(config, "test")
  levels = lambda d: sorted(int(round((v + 1) * 127.5)) for v in d.images[:, 0, 0, 0])
  assert sorted(levels(train) + levels(test)) == [i * 10 for i in range(20)]
  assert 1 <= len(test) <= 12
  np.testing.assert_array_equal(image_sources.load_image_dataset(config, "test").images,
                                test.images)
  capped = image_sources.load_image_dataset(dict(config, max_examples=2), "train")
  np.testing.assert_array_equal(capped.images, train.images[:2])


def test_exif_orientation_is_applied_and_unreadable_files_are_named(tmp_path):
  exif = Image.Exif()
  exif[0x0112] = 6  # Stored 8 wide x 4 high, shown rotated: 4 wide x 8 high.
  Image.new("RGB", (8, 4), (0, 0, 0)).save(tmp_path / "photo.jpg", exif=exif)
  dataset = image_sources.load_image_dataset(_config(source="folder", folder=str(tmp_path)),
                                             "train")
  assert dataset.images.shape == (1, 8, 4, 3)
  (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
  with pytest.raises(UserError) as excinfo:
    image_sources.load_image_dataset(_config(source="folder", folder=str(tmp_path)), "train")
  assert_one_line_error(excinfo, "cannot read image", str(tmp_path / "broken.png"))


# ------------------------------------------------------------------------------------ tfds
@pytest.fixture(name="tfds_dir", scope="module")
def fixture_tfds_dir(tmp_path_factory):
  """(tfds, data_dir) where the datasets of `_TFDS_SPLITS` look prepared: metadata only.

  `tfds.testing.mock_data` replaces reading, not `builder.is_prepared()`; with policy
  USE_FILES and these files, the splits are known as on a real dataset.
  """
  tfds = tfds_text._import_tfds()  # pylint: disable=protected-access
  data_dir = tmp_path_factory.mktemp("tfds")
  for name, splits in _TFDS_SPLITS.items():
    builder = tfds.builder(name, data_dir=str(data_dir))
    builder.info.set_splits(tfds.core.SplitDict(
        [tfds.core.SplitInfo(name=s, shard_lengths=[1], num_bytes=0) for s in splits]))
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)
  return tfds, str(data_dir)


def _mock(tfds, data_dir, num_examples=6):
  return tfds.testing.mock_data(num_examples=num_examples, data_dir=data_dir,
                                policy=tfds.testing.MockPolicy.USE_FILES)


def _raw(tfds, data_dir, name, split, keys=("image", "label")):
  builder = tfds.builder(name, data_dir=data_dir)
  examples = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
  return [np.stack([e[k] for e in examples]) for k in keys]


def test_tfds_mnist_resized_grey_with_labels(tfds_dir):
  tfds, data_dir = tfds_dir
  config = _config(source="tfds", tfds_name="mnist", tfds_data_dir=data_dir, resolution=16)
  with _mock(tfds, data_dir):
    dataset = image_sources.load_image_dataset(config, "train")
    native = image_sources.load_image_dataset(dict(config, resolution=0), "test")
    raw_images, raw_labels = _raw(tfds, data_dir, "mnist", "train")
    raw_test, _ = _raw(tfds, data_dir, "mnist", "test")
  assert dataset.images.shape == (6, 16, 16, 1) and dataset.images.dtype == np.float32
  assert dataset.images.min() >= -1 and dataset.images.max() <= 1
  expected = np.stack([image_preprocess.resize_and_center_crop(i, 16) for i in raw_images])
  np.testing.assert_array_equal(dataset.images, image_preprocess.to_unit_range(expected))
  assert dataset.labels.dtype == np.int32 and dataset.num_classes == 10
  np.testing.assert_array_equal(dataset.labels, raw_labels)
  assert dataset.class_names == tuple(str(d) for d in range(10))
  np.testing.assert_array_equal(native.images, raw_test / np.float32(127.5) - 1)


def test_tfds_cifar10_rgb_channels_and_max_examples(tfds_dir):
  tfds, data_dir = tfds_dir
  config = _config(source="tfds", tfds_name="cifar10", tfds_data_dir=data_dir)
  with _mock(tfds, data_dir):
    rgb = image_sources.load_image_dataset(config, "test")
    grey = image_sources.load_image_dataset(dict(config, channels=1, max_examples=4),
                                            "test")
  assert rgb.images.shape == (6, 32, 32, 3) and rgb.num_classes == 10
  assert len(rgb.class_names) == 10
  assert grey.images.shape == (4, 32, 32, 1)
  np.testing.assert_array_equal(grey.labels, rgb.labels[:4])
  luma = rgb.images[:4] @ np.array([0.299, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(grey.images[..., 0], luma, atol=2 / 127.5)


def test_tfds_celeb_a_is_centre_cropped_and_unlabelled(tfds_dir):
  tfds, data_dir = tfds_dir
  config = _config(source="tfds", tfds_name="celeb_a", tfds_data_dir=data_dir, resolution=16,
                   tfds_test_split="validation")
  with _mock(tfds, data_dir, num_examples=3):
    dataset = image_sources.load_image_dataset(config, "test")
    (raw_images,) = _raw(tfds, data_dir, "celeb_a", "validation", keys=("image",))
  assert raw_images.shape[1:] == (218, 178, 3)
  assert dataset.images.shape == (3, 16, 16, 3)
  assert dataset.labels is None and dataset.num_classes == 0
  expected = np.stack([image_preprocess.resize_and_center_crop(i, 16) for i in raw_images])
  np.testing.assert_array_equal(dataset.images, image_preprocess.to_unit_range(expected))


def test_tfds_imagenet_sizes_differ_so_native_resolution_is_refused(tfds_dir):
  tfds, data_dir = tfds_dir
  config = _config(source="tfds", tfds_name="imagenet2012", tfds_data_dir=data_dir,
                   tfds_test_split="validation")
  with _mock(tfds, data_dir, num_examples=4):
    resized = image_sources.load_image_dataset(dict(config, resolution=8), "test")
    with pytest.raises(UserError) as excinfo:
      image_sources.load_image_dataset(config, "train")
  assert resized.images.shape == (4, 8, 8, 3) and resized.num_classes == 1000
  assert_one_line_error(excinfo, "config.data.resolution=0", "example 1", "example 0")


def test_tfds_key_and_split_mistakes(tfds_dir):
  tfds, data_dir = tfds_dir
  config = _config(source="tfds", tfds_name="mnist", tfds_data_dir=data_dir)
  with _mock(tfds, data_dir, num_examples=2):
    with pytest.raises(UserError) as excinfo:
      image_sources.load_image_dataset(dict(config, tfds_image_key="picture"), "train")
    assert_one_line_error(excinfo, "config.data.tfds_image_key='picture'", "image")
    with pytest.raises(UserError) as excinfo:
      image_sources.load_image_dataset(dict(config, tfds_label_key="image"), "train")
    assert_one_line_error(excinfo, "config.data.tfds_label_key='image'", "label")
    with pytest.raises(UserError) as excinfo:
      image_sources.load_image_dataset(dict(config, tfds_test_split="validation"), "test")
    assert_one_line_error(excinfo, "config.data.tfds_test_split='validation'", "test, train")
    unlabelled = image_sources.load_image_dataset(dict(config, tfds_label_key="none"),
                                                  "train")
  assert unlabelled.labels is None and len(unlabelled) == 2


def test_tfds_coco_captions_gives_every_caption_of_each_image(tfds_dir):
  tfds, data_dir = tfds_dir
  config = dict(image_sources.named_data("coco_captions"), tfds_data_dir=data_dir,
                resolution=8)
  with _mock(tfds, data_dir, num_examples=3):
    dataset = image_sources.load_image_dataset(config, "test")
    (raw_captions,) = _raw(tfds, data_dir, "coco_captions", "test", keys=("captions",))
    one_each = image_sources.load_image_dataset(dict(config, tfds_caption_key="image/filename"),
                                                "test")
    with pytest.raises(UserError) as excinfo:
      image_sources.load_image_dataset(dict(config, tfds_caption_key="captions/id"), "test")
  expected = [[text.decode() for text in example["text"]] for example in raw_captions]
  assert min(len(group) for group in expected) > 1  # the mock draws 5..49 per image
  assert dataset.all_captions == expected and dataset.labels is None
  assert dataset.captions == [group[0] for group in expected]
  assert dataset.caption_lists() == expected and dataset.images.shape == (3, 8, 8, 3)
  assert one_each.all_captions is None and len(one_each.captions) == 3
  assert one_each.caption_lists() == [[text] for text in one_each.captions]
  assert_one_line_error(excinfo, "config.data.tfds_caption_key='captions/id'",
                  "captions/text, image/filename")


@pytest.mark.parametrize("name, fragment", [("cifar10", ""), ("imagenet2012", "--manual_dir")])
def test_tfds_not_prepared_fails_fast(tfds_dir, tmp_path, name, fragment):
  del tfds_dir  # Only so tfds is imported before the clock starts.
  start = time.monotonic()
  with pytest.raises(UserError) as excinfo:
    image_sources.load_image_dataset(
        _config(source="tfds", tfds_name=name, tfds_data_dir=str(tmp_path)), "train")
  assert time.monotonic() - start < 5
  assert_one_line_error(excinfo, f"config.data.tfds_name={name!r}", "not prepared", str(tmp_path),
                  f"tfds build {name} --data_dir={tmp_path}", fragment)


def test_import_does_not_import_tensorflow():
  code = ("import sys, genvis.data.image_sources, genvis.data.image_folder, "
          "genvis.data.tfds_images; assert 'tensorflow' not in sys.modules")
  repo_root = pathlib.Path(__file__).resolve().parents[2]
  subprocess.run([sys.executable, "-c", code], cwd=repo_root, check=True)
