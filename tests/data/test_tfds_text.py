"""Tests for genvis.data.tfds_text; offline, with tfds' mocked examples."""

import contextlib
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from genvis import config_lib
from genvis.data import text_sources, tfds_text
from genvis.errors import UserError

# The module's own import, so TensorFlow is as quiet here as in real use.
tfds = tfds_text._import_tfds()  # pylint: disable=protected-access

# The real split names of each dataset, written into the fake metadata.
_SPLITS = {'tiny_shakespeare': ('train', 'validation', 'test'), 'lm1b': ('train', 'test'),
           'glue/sst2': ('train', 'validation', 'test')}


def _write_metadata(data_dir, name):
  """Makes `name` look prepared in `data_dir`: metadata files only, no records.

  `tfds.testing.mock_data` replaces reading but not `builder.is_prepared()`, and under its
  default policy (AUTO, which falls back to USE_CODE: the pip package ships no metadata) the
  splits are unknown. With policy USE_FILES and these files, both look as on a real dataset.
  """
  builder = tfds.builder(name, data_dir=str(data_dir))
  split_infos = [
      tfds.core.SplitInfo(name=split, shard_lengths=[1], num_bytes=0) for split in _SPLITS[name]
  ]
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)


@contextlib.contextmanager
def _mocked(data_dir, name, num_examples):
  """Within it, `name` is prepared in `data_dir` and yields `num_examples` random texts."""
  _write_metadata(data_dir, name)
  with tfds.testing.mock_data(
      num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(data_dir)
  ):
    yield


def _mocked_texts(name, split):
  """The mocked examples, read with tfds directly (inside `_mocked`)."""
  ds = tfds.builder(name).as_dataset(split=split)
  return [example['text'].decode('utf-8') for example in tfds.as_numpy(ds)]


class GenvisToyText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A tiny dataset that really is prepared, so the real (unmocked) read path runs.

  It is not registered: `tfds.builder('genvis_toy_text', data_dir=...)` finds it from the
  prepared files, as it would a dataset built elsewhere with `tfds build`.
  """

  VERSION = tfds.core.Version('1.0.0')
  LINES = {'train': [f'línea {i}' for i in range(5)], 'test': ['ünï', 'cödé']}

  def _info(self):
    features = tfds.features.FeaturesDict({'text': tfds.features.Text(), 'n': np.int64})
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in self.LINES}

  def _generate_examples(self, split):
    for i, line in enumerate(self.LINES[split]):
      yield i, {'text': line, 'n': i}


@pytest.fixture(name='toy_dir')
def fixture_toy_dir(tmp_path):
  """A data_dir in which `genvis_toy_text` is prepared (takes ~0.3 s)."""
  skip_stats = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
  GenvisToyText(data_dir=str(tmp_path)).download_and_prepare(download_config=skip_stats)
  return str(tmp_path)


def _assert_one_line_user_error(excinfo, *fragments):
  message = str(excinfo.value)
  assert '\n' not in message, message
  for fragment in fragments:
    assert fragment in message, message


@pytest.mark.parametrize('name', ['tiny_shakespeare', 'lm1b'])
def test_joins_mocked_examples_with_newlines(tmp_path, name):
  with _mocked(tmp_path, name, num_examples=5):
    text = tfds_text.load_tfds_text(name, 'train', data_dir=str(tmp_path))
    expected = _mocked_texts(name, 'train')
  assert isinstance(text, str)
  assert len(expected) == 5 and all(t and '\n' not in t for t in expected)
  assert text == '\n'.join(expected)


def test_lm1b_has_one_line_per_example(tmp_path):
  with _mocked(tmp_path, 'lm1b', num_examples=7):
    text = tfds_text.load_tfds_text('lm1b', 'test', data_dir=str(tmp_path))
  lines = text.split('\n')
  assert len(lines) == 7 and all(lines)


def test_max_examples_reads_a_prefix(tmp_path):
  with _mocked(tmp_path, 'lm1b', num_examples=7):
    full = tfds_text.load_tfds_text('lm1b', 'train', data_dir=str(tmp_path))
    head = tfds_text.load_tfds_text('lm1b', 'train', data_dir=str(tmp_path), max_examples=3)
  assert head.split('\n') == full.split('\n')[:3]


def test_reads_a_prepared_dataset(toy_dir, monkeypatch):
  monkeypatch.setattr(tfds_text, '_BATCH_SIZE', 2)  # Several batches, one partly filled.
  text = tfds_text.load_tfds_text('genvis_toy_text', 'train', data_dir=toy_dir)
  # tfds stores examples in an order hashed from their keys, so compare as sets of lines.
  assert sorted(text.split('\n')) == GenvisToyText.LINES['train']


def test_reads_split_expressions_and_max_examples(toy_dir):
  both = tfds_text.load_tfds_text('genvis_toy_text', 'test+train[:2]', data_dir=toy_dir)
  assert len(both.split('\n')) == 4 and 'cödé' in both.split('\n')
  full = tfds_text.load_tfds_text('genvis_toy_text', 'train', data_dir=toy_dir)
  head = tfds_text.load_tfds_text('genvis_toy_text', 'train', data_dir=toy_dir, max_examples=2)
  assert head.split('\n') == full.split('\n')[:2]


def test_non_text_feature_is_rejected(toy_dir):
  with pytest.raises(UserError) as excinfo:
    tfds_text.load_tfds_text('genvis_toy_text', 'train', data_dir=toy_dir, text_key='n')
  _assert_one_line_user_error(excinfo, "'n'", 'not a scalar string')


def test_not_prepared_fails_fast_with_one_line(tmp_path):
  start = time.monotonic()
  with pytest.raises(UserError) as excinfo:
    tfds_text.load_tfds_text('tiny_shakespeare', 'train', data_dir=str(tmp_path))
  assert time.monotonic() - start < 10
  _assert_one_line_user_error(
      excinfo, 'tiny_shakespeare', "'train'", str(tmp_path), 'tfds build', 'tfds_data_dir'
  )


def test_unknown_dataset(tmp_path):
  with pytest.raises(UserError) as excinfo:
    tfds_text.load_tfds_text('no_such_dataset_xyz', 'train', data_dir=str(tmp_path))
  _assert_one_line_user_error(excinfo, 'no_such_dataset_xyz')


def test_misspelt_dataset_suggests_the_real_name(tmp_path):
  with pytest.raises(UserError) as excinfo:
    tfds_text.load_tfds_text('tiny_shakespear', 'train', data_dir=str(tmp_path))
  _assert_one_line_user_error(excinfo, "'tiny_shakespear'", 'tiny_shakespeare?')


def test_unknown_split_lists_available_splits(tmp_path):
  _write_metadata(tmp_path, 'lm1b')
  with pytest.raises(UserError) as excinfo:
    tfds_text.load_tfds_text('lm1b', 'validation', data_dir=str(tmp_path))
  _assert_one_line_user_error(excinfo, "'lm1b'", "'validation'", 'test, train')


def test_missing_text_key_lists_available_features(tmp_path):
  _write_metadata(tmp_path, 'lm1b')
  with pytest.raises(UserError) as excinfo:
    tfds_text.load_tfds_text('lm1b', 'train', data_dir=str(tmp_path), text_key='sentence')
  _assert_one_line_user_error(excinfo, "'sentence'", 'available features: text')


def test_lm_config_reads_the_feature_named_by_tfds_text_key(tmp_path):
  config = config_lib.load_config(
      os.path.join(REPO, 'configs/gpt_lm.py:data=shakespeare'),
      {'data.tfds_name': 'glue/sst2', 'data.tfds_data_dir': str(tmp_path)})
  with _mocked(tmp_path, 'glue/sst2', num_examples=4):
    with pytest.raises(UserError) as excinfo:  # the default key, 'text': sst2 has 'sentence'
      text_sources.load_text_splits(config.data)
    _assert_one_line_user_error(excinfo, "no feature 'text'", 'idx, label, sentence',
                                'set config.data.tfds_text_key')
    config.data.tfds_text_key = 'sentence'
    train, val = text_sources.load_text_splits(config.data)
    expected = {split: [e['sentence'].decode('utf-8') for e in
                        tfds.as_numpy(tfds.builder('glue/sst2').as_dataset(split=split))]
                for split in ('train', 'validation')}
  assert train == '\n'.join(expected['train']) and len(expected['train']) == 4
  assert val == '\n'.join(expected['validation'])


def test_rejects_non_positive_max_examples():
  with pytest.raises(UserError):
    tfds_text.load_tfds_text('lm1b', 'train', max_examples=0)


def test_import_does_not_import_tensorflow():
  # A fresh interpreter: in this one the tests above have imported TensorFlow already.
  code = 'import sys, genvis.data.tfds_text; assert "tensorflow" not in sys.modules'
  repo_root = pathlib.Path(__file__).resolve().parents[2]
  subprocess.run([sys.executable, '-c', code], cwd=repo_root, check=True)
