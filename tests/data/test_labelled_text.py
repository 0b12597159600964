"""Labelled text for fine-tuning: tfds (mocked, offline), the embedded task, and its batches."""

import contextlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from genvis import config_lib
from genvis.data import labelled_text, text_sources, tfds_text
from genvis.data.labelled_batches import LabelledBatches
from genvis.errors import UserError

from conftest import REPO, assert_one_line_error

tfds = tfds_text._import_tfds()  # pylint: disable=protected-access

_SPLITS = {"imdb_reviews": ("train", "test", "unsupervised"),
           "glue/sst2": ("train", "validation", "test")}


@contextlib.contextmanager
def _mocked(data_dir, name, num_examples):
  """Within it, `name` looks prepared in `data_dir` (metadata files only) and yields
  `num_examples` random examples per split (tfds' mock_data reads no records)."""
  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.info.set_splits(tfds.core.SplitDict(
      [tfds.core.SplitInfo(name=s, shard_lengths=[1], num_bytes=0) for s in _SPLITS[name]]))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)
  with tfds.testing.mock_data(num_examples=num_examples,
                              policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(data_dir)):
    yield


@pytest.mark.parametrize("name,text_key,names", [
    ("imdb_reviews", "text", ("neg", "pos")),
    ("glue/sst2", "sentence", ("negative", "positive")),
])
def test_tfds_labelled_reads_texts_and_class_labels(tmp_path, name, text_key, names):
  with _mocked(tmp_path, name, num_examples=6):
    texts, labels, class_names = labelled_text.load_tfds_labelled(
        name, "train", data_dir=str(tmp_path), text_key=text_key)
    expected = [(e[text_key].decode(), int(e["label"]))
                for e in tfds.as_numpy(tfds.builder(name).as_dataset(split="train"))]
  assert class_names == names
  assert list(zip(texts, labels.tolist())) == expected
  assert labels.dtype == np.int32 and len(texts) == 6


def test_sst2_variant_uses_validation_as_heldout(tmp_path):
  config = config_lib.load_config(os.path.join(REPO, "configs/gpt_sft.py:data=sst2"),
                                  {"data.tfds_data_dir": str(tmp_path),
                                   "data.tfds_max_examples": 4})
  with _mocked(tmp_path, "glue/sst2", num_examples=5):
    splits = labelled_text.load_labelled_splits(config.data)
  assert (config.data.tfds_heldout_split, config.data.tfds_text_key) == ("validation", "sentence")
  assert len(splits.train_texts) == 4 and len(splits.heldout_texts) == 4  # max_examples
  assert splits.num_classes == 2


def test_tfds_data_dir_without_the_tfds_source_is_refused_not_ignored(tmp_path):
  config = config_lib.load_config(os.path.join(REPO, "configs/gpt_sft.py"),
                                  {"data.tfds_data_dir": str(tmp_path)})
  with pytest.raises(UserError) as excinfo:
    labelled_text.load_labelled_splits(config.data)
  assert_one_line_error(excinfo, f"config.data.tfds_data_dir={str(tmp_path)!r}",
                        "config.data.source='embedded'", "data=imdb")


def test_tfds_not_prepared_fails_fast_in_one_line(tmp_path):
  start = time.monotonic()
  with pytest.raises(UserError) as excinfo:
    labelled_text.load_tfds_labelled("imdb_reviews", "train", data_dir=str(tmp_path))
  assert time.monotonic() - start < 10
  assert_one_line_error(excinfo, "imdb_reviews", "not prepared", str(tmp_path), "tfds build")


def test_tfds_label_key_must_be_a_class_label(tmp_path):
  with _mocked(tmp_path, "imdb_reviews", num_examples=2):
    with pytest.raises(UserError) as excinfo:
      labelled_text.load_tfds_labelled("imdb_reviews", "train", data_dir=str(tmp_path),
                                       label_key="text")
    assert_one_line_error(excinfo, "'text'", "not a ClassLabel", "tfds_label_key")
    with pytest.raises(UserError) as excinfo:
      labelled_text.load_tfds_labelled("imdb_reviews", "train", data_dir=str(tmp_path),
                                       label_key="stars")
    assert_one_line_error(excinfo, "'stars'", "available: label, text")


# ----------------------------------------------------------------------------- embedded
@pytest.fixture(scope="module", name="doc_topics")
def fixture_doc_topics():
  return labelled_text.embedded_doc_topics()


def test_embedded_task_is_deterministic_disjoint_and_labelled(doc_topics):
  again = labelled_text.embedded_doc_topics()
  assert again.heldout_texts == doc_topics.heldout_texts
  np.testing.assert_array_equal(again.train_labels, doc_topics.train_labels)
  assert not set(doc_topics.train_texts) & set(doc_topics.heldout_texts)
  assert doc_topics.num_classes == 5
  for labels in (doc_topics.train_labels, doc_topics.heldout_labels):
    assert set(np.unique(labels)) == set(range(5))  # every class in both splits
  assert 0.2 < len(doc_topics.heldout_texts) / (len(doc_topics.train_texts)
                                                + len(doc_topics.heldout_texts)) < 0.3
  assert all(len(t.strip()) >= 40 for t in doc_topics.heldout_texts)


def test_embedded_labels_follow_the_topic_table(doc_topics):
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  # The "if" topic is a statement; the paragraphs of "typesmapping" are library text.
  first_if = topics.topics["if"].split("\n\n")[2].strip("\n")
  statements = doc_topics.class_names.index("statements")
  texts = doc_topics.train_texts + doc_topics.heldout_texts
  labels = np.concatenate([doc_topics.train_labels, doc_topics.heldout_labels])
  assert labels[texts.index(first_if)] == statements
  library = doc_topics.class_names.index("library")
  mapping_paragraphs = [p.strip("\n") for p in topics.topics["typesmapping"].split("\n\n")]
  found = [labels[texts.index(p)] for p in mapping_paragraphs if p in texts]
  assert len(found) > 20 and set(found) == {library}


def test_majority_baseline_is_the_training_majority_on_heldout(doc_topics):
  name, rate = doc_topics.majority_baseline()
  majority = np.bincount(doc_topics.train_labels).argmax()
  assert name == doc_topics.class_names[majority] == "library"
  assert rate == pytest.approx(np.mean(doc_topics.heldout_labels == majority))
  assert 0.2 < rate < 0.35


def test_pretraining_text_excludes_exactly_the_heldout_paragraphs(doc_topics):
  text = labelled_text.pretraining_text()
  assert not [p for p in doc_topics.heldout_texts if p in text]
  assert all(p in text for p in doc_topics.train_texts)
  assert len(text) < len(text_sources.embedded_corpus())


# ------------------------------------------------------------------------------ batches
def _batches(num_examples=10, batch=4, seed=3):
  sequences = [np.arange(1, n + 2, dtype=np.int32) for n in range(num_examples)]
  return LabelledBatches(sequences, np.arange(num_examples) % 3, seq_len=6,
                         global_batch=batch, seed=seed)


def test_batches_pad_truncate_and_record_lengths():
  batches = _batches()
  assert batches.lengths.tolist() == [1, 2, 3, 4, 5, 6, 6, 6, 6, 6]
  np.testing.assert_array_equal(batches.tokens[2], [1, 2, 3, 0, 0, 0])
  np.testing.assert_array_equal(batches.tokens[9], [1, 2, 3, 4, 5, 6])  # first 6 kept
  assert batches.truncated == 4


def test_training_order_is_a_function_of_seed_and_step_and_covers_each_epoch():
  batches = _batches(num_examples=10, batch=4)
  first = np.concatenate([batches.train_indices(s) for s in range(5)])  # 20 = 2 epochs
  assert sorted(first[:10]) == list(range(10)) and sorted(first[10:]) == list(range(10))
  fresh = _batches(num_examples=10, batch=4)
  np.testing.assert_array_equal(fresh.train_indices(3), batches.train_indices(3))
  assert not np.array_equal(_batches(seed=4).train_indices(0), batches.train_indices(0))
  halves = [batches.train_batch(2, p, 2)["labels"] for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), batches.train_batch(2)["labels"])


def test_eval_batches_cover_every_example_once_with_padding_weighted_zero():
  batches = _batches(num_examples=10, batch=4)
  assert batches.num_eval_batches == 3
  evals = [batches.eval_batch(i) for i in range(3)]
  weights = np.concatenate([b["weights"] for b in evals])
  assert weights.tolist() == [1.0] * 10 + [0.0] * 2
  labels = np.concatenate([b["labels"] for b in evals])[:10]
  np.testing.assert_array_equal(labels, np.arange(10) % 3)
  halves = [batches.eval_batch(2, p, 2)["weights"] for p in range(2)]
  assert np.concatenate(halves).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_importing_the_sft_task_does_not_import_tensorflow():
  code = "import sys, genvis.tasks.sft; assert 'tensorflow' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
