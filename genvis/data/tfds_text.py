"""Reads a TensorFlow Datasets (tfds) text split into one Python string.

This is the only module that reads text datasets from tfds. TensorFlow and tfds are imported
inside functions: importing them costs seconds, and TensorFlow must not initialise its devices
(and grab accelerator memory) in a JAX program that never reads tfds.

Nothing here downloads. The dataset must already be prepared in the data dir (`tfds build`
on a machine with network access); otherwise `load_tfds_text` fails at once with a one-line
`UserError` instead of tfds trying, and retrying, to reach the network.
"""

import os

import numpy as np

from genvis.errors import UserError

# Examples per tf.data batch. Batching moves the per-example loop from Python into tf.data,
# which matters for datasets with one short sentence per example (lm1b has ~30M).
_BATCH_SIZE = 4096


def load_tfds_text(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    text_key: str | None = None,
    max_examples: int | None = None,
) -> str:
  """Returns the texts of a prepared tfds split, decoded as UTF-8 and joined with "\\n".

  Args:
    name: tfds name, optionally with config and version ("lm1b", "tiny_shakespeare:1.0.0").
    split: split name or tfds split expression ("train", "train[:10%]", "train+test").
    data_dir: where the dataset was prepared; None means tfds' default (TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    text_key: the string feature to read; None means 'text'.
    max_examples: read at most this many examples (in order) from the split.

  Raises:
    UserError: the dataset is unknown, not prepared in `data_dir`, has no such split or text
      feature, or `max_examples` is not positive. The message is one line.
  """
  if max_examples is not None and max_examples < 1:
    raise UserError(f'max_examples must be a positive int or None, got {max_examples!r}')
  tfds, builder, key = open_prepared(name, split, data_dir=data_dir, text_key=text_key)
  ds = builder.as_dataset(split=split, shuffle_files=False)
  if max_examples is not None:
    ds = ds.take(max_examples)
  ds = ds.map(lambda example: example[key]).batch(_BATCH_SIZE)
  texts = [text for batch in tfds.as_numpy(ds) for text in batch]
  # One decode of the joined bytes is much cheaper than one per sentence.
  return b'\n'.join(texts).decode('utf-8')


def open_prepared(name: str, split: str, *, data_dir: str | None = None,
                  text_key: str | None = None):
  """(tfds module, builder, text feature name) of a prepared dataset split, after every check
  that the metadata allows (prepared, split, text feature), so that mistakes are reported in
  one line and well under a second, before TensorFlow is imported."""
  tfds = _import_tfds()
  builder = _make_builder(tfds, name, data_dir)
  _check_prepared(builder, name, split, data_dir)
  _check_split(builder, name, split)
  key = _text_key(builder, name, text_key)
  _hide_gpus_from_tf()
  return tfds, builder, key


def _import_tfds():
  """Imports tfds with TensorFlow's C++ logging silenced (unless the user chose a level)."""
  # tfds imports TensorFlow lazily, so these must be set before the first tfds call that needs
  # it. TF 2.21 prints its oneDNN notice before TF_CPP_MIN_LOG_LEVEL takes effect; turning the
  # oneDNN kernels off silences it and costs nothing here, as only tf.data input ops run.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds


def _hide_gpus_from_tf():
  """Keeps TensorFlow off the accelerators, whose memory belongs to JAX."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    # TF's devices were already initialised by someone else; they chose, we cannot change it.
    pass


def _make_builder(tfds, name, data_dir):
  """Returns `tfds.builder(name)`, turning tfds' multi-page errors into one line."""
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError:
    # tfds' own message lists all ~450 datasets; suggest the nearest names instead.
    import difflib  # pylint: disable=g-import-not-at-top

    known = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name.split('/')[0].split(':')[0], known, n=3)
    hint = f'; did you mean {", ".join(close)}?' if close else '; see `tfds.list_builders()`'
    raise UserError(
        f'unknown tfds dataset {name!r} (tensorflow_datasets {tfds.__version__}){hint}'
    ) from None
  except (ValueError, AssertionError) as e:  # bad config or version in `name`
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f'cannot build tfds dataset {name!r}: {first_line}') from None


def _check_prepared(builder, name, split, data_dir):
  """Fails fast, instead of downloading, when the dataset is not in `data_dir`.

  Only `tfds.load` and `download_and_prepare` download (hence their download/try_gcs flags),
  and this module calls neither. Without this check `as_dataset` would fail only after the
  seconds-long TensorFlow import, with an AssertionError that suggests `download=True`.
  """
  if builder.is_prepared():
    return
  shown_dir = data_dir if data_dir is not None else f'{builder.data_dir_root} (the tfds default)'
  raise UserError(
      f'tfds dataset {name!r} (split {split!r}) is not prepared in data_dir {shown_dir} '
      f'(no dataset_info.json in {builder.data_dir}); on a machine with network access run '
      f'`tfds build {name} --data_dir {data_dir or builder.data_dir_root}` and copy that '
      'directory here, or point config.data.tfds_data_dir at a directory that holds it'
  )


def _check_split(builder, name, split):
  """Rejects a split (or split expression) the prepared dataset does not have."""
  try:
    builder.info.splits[split]  # Parses expressions like "train[:10%]" too.
  except (KeyError, ValueError):
    available = ', '.join(sorted(builder.info.splits.keys()))
    raise UserError(
        f'tfds dataset {name!r} has no split {split!r}; available splits: {available} '
        '(slices like "train[:10%]" are allowed)'
    ) from None


def _text_key(builder, name, text_key):
  """Returns the feature to read: `text_key`, or 'text', if it is a scalar string feature."""
  features = builder.info.features
  key = 'text' if text_key is None else text_key
  if key not in features:
    raise UserError(
        f'tfds dataset {name!r} has no feature {key!r}; available features: '
        f'{", ".join(sorted(features.keys()))} (set config.data.tfds_text_key to one of them)'
    )
  feature = features[key]
  if feature.shape != () or np.dtype(feature.np_dtype) != np.object_:
    raise UserError(
        f'feature {key!r} of tfds dataset {name!r} is not a scalar string but a '
        f'{type(feature).__name__} (set config.data.tfds_text_key to a Text feature)'
    )
  return key
