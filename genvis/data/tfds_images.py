"""Reads a prepared TensorFlow Datasets (tfds) image split into an `ImageDataset`.

tf.data only reads and decodes (in batches, on the CPU: TensorFlow is kept off the
accelerators, whose memory belongs to JAX); every pixel decision (channels, centre crop,
resize, scaling to [-1, 1]) is the numpy/PIL path of `genvis.data.image_preprocess`, the one
plain folders use too. At native size with matching channels a whole batch is just scaled.

Nothing downloads: `download_and_prepare` and `tfds.load` are never called. A dataset that is
not prepared in `config.data.tfds_data_dir` fails at once with one line that says which
`tfds build` command prepares it (with `--manual_dir` for datasets such as imagenet2012 whose
archives must be fetched by hand), before TensorFlow is imported. The generic checks (import,
builder, split, GPUs) are `genvis.data.tfds_text`'s, shared with the text datasets.

Captions (`config.data.tfds_caption_key`, e.g. "captions/text" for coco_captions) are any
string feature, reached through nested dicts and Sequences with "/". A feature inside a
Sequence gives several captions per image: `ImageDataset.captions` holds the first and
`ImageDataset.all_captions` all of them, in the stored order.
"""

import numpy as np

from genvis.data import image_preprocess
from genvis.data import tfds_text
from genvis.data.image_sources import ImageDataset
from genvis.errors import UserError

# Examples per tf.data batch when every image has the same shape (28x28 MNIST: 3 MB of uint8).
_BATCH_SIZE = 4096
_SPLIT_KEYS = {"train": "tfds_train_split", "test": "tfds_test_split"}

# tfds_text's underscored helpers are this package's shared tfds code.
# pylint: disable=protected-access


def load_tfds_images(settings: dict, split: str) -> ImageDataset:
  """Split `split` ("train", "test" or a tfds split expression) of `settings["tfds_name"]`.

  Args:
    settings: the checked config.data values (image_sources._settings).
    split: "train" and "test" read `tfds_train_split` and `tfds_test_split`; anything else is
      passed to tfds as a split expression ("validation", "train[:10%]").

  Returns:
    The split as an ImageDataset, in the dataset's stored order; labels from the ClassLabel
    feature (or None), class names from it.
  """
  name, data_dir = settings["tfds_name"], settings["tfds_data_dir"] or None
  if not name:
    raise UserError("config.data.tfds_name is empty: name a prepared tfds dataset (e.g. "
                    "cifar10) for config.data.source='tfds'")
  split_key = _SPLIT_KEYS.get(split)
  tfds_split = settings[split_key] if split_key else split
  tfds = tfds_text._import_tfds()
  try:
    builder = tfds_text._make_builder(tfds, name, data_dir)
  except UserError as e:
    raise UserError(f"config.data.tfds_name={name!r}: {e}") from None
  _check_prepared(builder, name, data_dir)
  try:
    tfds_text._check_split(builder, name, tfds_split)
  except UserError as e:
    shown_key = f"config.data.{split_key}" if split_key else "split"
    raise UserError(f"{shown_key}={tfds_split!r}: {e}") from None
  image_key = _image_key(tfds, builder, name, settings["tfds_image_key"])
  label_key, class_names = _label_key(tfds, builder, name, settings["tfds_label_key"])
  caption_path, several = _caption_path(tfds, builder, name, settings["tfds_caption_key"])
  tfds_text._hide_gpus_from_tf()
  pixels, labels, caption_lists = _read(tfds, builder, tfds_split, image_key, label_key,
                                        caption_path, settings)
  if labels is not None and ((labels < 0) | (labels >= len(class_names))).any():
    raise UserError(f"tfds dataset {name!r} split {tfds_split!r} has examples without a label "
                    f"in 0..{len(class_names) - 1} (imagenet2012's test split is unlabelled); "
                    "set config.data.tfds_label_key='none' or use a labelled split")
  return ImageDataset(
      images=image_preprocess.to_unit_range(pixels),
      labels=None if labels is None else labels.astype(np.int32),
      captions=None if caption_lists is None else [group[0] for group in caption_lists],
      all_captions=caption_lists if several else None,
      num_classes=len(class_names), class_names=class_names, name=name)


def _check_prepared(builder, name: str, data_dir: str | None):
  """Fails fast, naming the `tfds build` command, when `name` is not in the data dir."""
  if builder.is_prepared():
    return
  root = data_dir or builder.data_dir_root
  where = data_dir or f"{root} (the tfds default; set config.data.tfds_data_dir)"
  command = f"tfds build {name} --data_dir={root}"
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    command += (" --manual_dir=<folder with the archives its manual download instructions "
                "name>")
  raise UserError(f"config.data.tfds_name={name!r}: not prepared in {where} (no "
                  f"dataset_info.json in {builder.data_dir}); run `{command}` on a machine "
                  "with network access, then copy the data dir here")


def _image_key(tfds, builder, name: str, requested: str) -> str:
  """`requested`, else "image", else the only Image feature; it must be an Image feature."""
  features = builder.info.features
  image_features = sorted(k for k, f in features.items() if isinstance(f, tfds.features.Image))
  if requested:
    key = requested
  elif "image" in image_features or len(image_features) != 1:
    key = "image"
  else:
    key = image_features[0]
  if key not in image_features:
    raise UserError(f"config.data.tfds_image_key={key!r}: tfds dataset {name!r} has no such "
                    f"Image feature; its Image features: {', '.join(image_features) or 'none'}")
  return key


def _label_key(tfds, builder, name: str, requested: str):
  """(the ClassLabel feature to read or None, its class names)."""
  if requested == "none":
    return None, ()
  features = builder.info.features
  key = requested or "label"
  feature = features[key] if key in features else None
  if not isinstance(feature, tfds.features.ClassLabel):
    if not requested:  # Auto-detection: no "label" ClassLabel (celeb_a) means no labels.
      return None, ()
    labels = sorted(k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel))
    raise UserError(f"config.data.tfds_label_key={key!r}: not a ClassLabel feature of tfds "
                    f"dataset {name!r}; its ClassLabel features: {', '.join(labels) or 'none'} "
                    "('none': no labels)")
  return key, tuple(feature.names)


def _string_features(tfds, features, prefix=(), in_sequence=False):
  """{"a/b": (keys to reach it, several per example)} for every string feature."""
  found = {}
  if isinstance(features, tfds.features.FeaturesDict):
    for key, feature in features.items():
      found.update(_string_features(tfds, feature, (*prefix, key), in_sequence))
  elif isinstance(features, tfds.features.Sequence):
    found.update(_string_features(tfds, features.feature, prefix, True))
  elif (isinstance(features, tfds.features.Tensor)
        and np.dtype(features.np_dtype).kind in "OSU"):
    found["/".join(prefix)] = (prefix, in_sequence or bool(features.shape))
  return found


def _caption_path(tfds, builder, name: str, requested: str):
  """(the keys that reach the caption feature, or None; whether there are several per
  image)."""
  if not requested:
    return None, False
  strings = _string_features(tfds, builder.info.features)
  if requested not in strings:
    raise UserError(f"config.data.tfds_caption_key={requested!r}: not a string feature of "
                    f"tfds dataset {name!r}; its string features: "
                    f"{', '.join(sorted(strings)) or 'none'} ('': no captions)")
  return strings[requested]


def _read(tfds, builder, split, image_key, label_key, caption_path, settings):
  """(uint8 [N, H, W, C] after the shared preprocessing, int64 labels [N] or None, each
  image's list of captions or None)."""
  feature_shape = builder.info.features[image_key].shape
  same_shape = None not in feature_shape
  ds = builder.as_dataset(split=split, shuffle_files=False)
  if settings["max_examples"]:
    ds = ds.take(settings["max_examples"])
  ds = ds.map(lambda example: _select(example, image_key, label_key, caption_path))
  # Images of different sizes (imagenet2012) cannot share a dense batch: one per batch.
  # Caption lists of different lengths are padded with "" and cut back by their count.
  batch_size = _BATCH_SIZE if same_shape else 1
  ds = (ds.batch(batch_size) if caption_path is None else ds.padded_batch(batch_size))
  ds = ds.prefetch(1)
  resolution, channels = settings["resolution"], settings["channels"]
  chunks, label_chunks = [], []
  caption_lists = None if caption_path is None else []
  first_shape = None
  for image_batch, label_batch, *caption_batch in tfds.as_numpy(ds):
    if first_shape is None:
      first_shape = image_batch.shape[1:]
    if resolution == 0 and image_batch.shape[1:] != first_shape:
      index = sum(len(c) for c in chunks)
      raise UserError(
          f"config.data.resolution=0 keeps native sizes, but example {index} of tfds "
          f"{builder.name!r} split {split!r} is {'x'.join(map(str, image_batch.shape[1:]))} "
          f"while example 0 is {'x'.join(map(str, first_shape))}; set config.data.resolution")
    if caption_path is not None:
      _append_captions(caption_lists, *caption_batch, builder.name, split)
    chunks.append(_preprocess_batch(image_batch, resolution, channels))
    label_chunks.append(np.asarray(label_batch, np.int64).reshape(-1))
  if not chunks:
    raise UserError(f"tfds dataset {builder.name!r} split {split!r} has no examples")
  labels = None if label_key is None else np.concatenate(label_chunks)
  return np.concatenate(chunks), labels, caption_lists


def _select(example, image_key, label_key, caption_path):
  """(image, label or 0[, captions as a 1-D string tensor, their count])."""
  selected = (example[image_key], 0 if label_key is None else example[label_key])
  if caption_path is None:
    return selected
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (tfds has imported it)
  captions = example
  for key in caption_path:
    captions = captions[key]
  captions = tf.reshape(captions, [-1])
  return (*selected, captions, tf.size(captions))


def _append_captions(caption_lists, padded, counts, name, split):
  """Adds one list of str per image of a batch of "" padded byte strings [B, K]."""
  for row, count in zip(padded, counts):
    if count == 0:
      raise UserError(f"tfds dataset {name!r} split {split!r}: example {len(caption_lists)} "
                      "has no caption (config.data.tfds_caption_key)")
    caption_lists.append([text.decode("utf-8") for text in row[:count]])


def _preprocess_batch(images: np.ndarray, resolution: int, channels: int) -> np.ndarray:
  """uint8 [B, H, W, C] through `resize_and_center_crop`, skipped when it changes nothing."""
  height, width, have = images.shape[1:]
  same_size = resolution == 0 or (height, width) == (resolution, resolution)
  if same_size and channels in (0, have) and have in (1, 3):
    return images
  return np.stack([image_preprocess.resize_and_center_crop(image, resolution, channels)
                   for image in images])
