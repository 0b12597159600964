"""Labelled text for supervised fine-tuning: (text, class) pairs in a training and a held-out split.

`config.data.source` picks one:

- "embedded": *which part of the CPython documentation a paragraph comes from* — an offline
  task built from `pydoc_data.topics` (the corpus the LM configs pre-train on), described in
  `embedded_doc_topics`;
- "tfds": a labelled tfds dataset already prepared in `config.data.tfds_data_dir` (nothing is
  downloaded): `imdb_reviews` (text/label, held-out split "test") or `glue/sst2`
  (sentence/label, held-out split "validation", since its test labels are hidden).

The tfds checks (unknown dataset, not prepared, no such split or feature) are those of
`genvis.data.tfds_text`, so every mistake is one line, raised before TensorFlow is imported.
"""

import collections
import dataclasses
import hashlib

import numpy as np

from genvis.data import source_keys, tfds_text
from genvis.errors import UserError

# Examples per tf.data batch when reading a tfds split (the per-example loop stays in tf.data).
_TFDS_BATCH = 4096


@dataclasses.dataclass(frozen=True)
class LabelledSplits:
  """Texts and integer labels (0 .. num_classes - 1) of a training and a held-out split."""

  train_texts: list[str]
  train_labels: np.ndarray
  heldout_texts: list[str]
  heldout_labels: np.ndarray
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def majority_baseline(self) -> tuple[str, float]:
    """(the most frequent training class, its frequency in the held-out split): the accuracy
    of a classifier that ignores its input."""
    majority = int(np.bincount(self.train_labels, minlength=self.num_classes).argmax())
    return self.class_names[majority], float(np.mean(self.heldout_labels == majority))


def load_labelled_splits(data_config) -> LabelledSplits:
  """The labelled splits that `config.data` names."""
  source_keys.check(data_config,
                    {"tfds_data_dir": ("tfds", "the data=imdb or data=sst2 variant")})
  if data_config.source == "embedded":
    return embedded_doc_topics(data_config.heldout_fraction, data_config.min_chars)
  if data_config.source == "tfds":
    read = lambda split: load_tfds_labelled(
        data_config.tfds_name, split, data_dir=data_config.tfds_data_dir or None,
        text_key=data_config.tfds_text_key, label_key=data_config.tfds_label_key,
        max_examples=data_config.tfds_max_examples or None)
    train_texts, train_labels, names = read(data_config.tfds_train_split)
    heldout_texts, heldout_labels, _ = read(data_config.tfds_heldout_split)
    return LabelledSplits(train_texts, train_labels, heldout_texts, heldout_labels, names)
  raise UserError(f"config.data.source={data_config.source!r}: expected 'embedded' or 'tfds' "
                  "for labelled text")


# ------------------------------------------------------------------------------------ tfds
def load_tfds_labelled(name: str, split: str, *, data_dir: str | None = None,
                       text_key: str = "text", label_key: str = "label",
                       max_examples: int | None = None
                       ) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
  """(texts, labels, class names) of a prepared tfds split, in the dataset's stored order.

  Raises UserError (one line) when the dataset is unknown or not prepared in `data_dir`, the
  split or a feature is missing, the label is not a ClassLabel, or the split holds unlabelled
  examples (glue's test splits: label -1).
  """
  if max_examples is not None and max_examples < 1:
    raise UserError(f"config.data.tfds_max_examples={max_examples} must be positive (0: all)")
  # The same fast, one-line checks as the LM's tfds text.
  tfds, builder, text_key = tfds_text.open_prepared(name, split, data_dir=data_dir,
                                                    text_key=text_key)
  class_names = _class_names(tfds, builder, name, label_key)
  ds = builder.as_dataset(split=split, shuffle_files=False)
  if max_examples is not None:
    ds = ds.take(max_examples)
  ds = ds.map(lambda example: (example[text_key], example[label_key])).batch(_TFDS_BATCH)
  texts, labels = [], []
  for text_batch, label_batch in tfds.as_numpy(ds):
    texts.extend(t.decode("utf-8") for t in text_batch)
    labels.append(np.asarray(label_batch, np.int64))
  labels = np.concatenate(labels) if labels else np.zeros((0,), np.int64)
  if len(texts) == 0:
    raise UserError(f"tfds dataset {name!r} split {split!r} has no examples")
  outside = (labels < 0) | (labels >= len(class_names))
  if outside.any():
    raise UserError(f"tfds dataset {name!r} split {split!r} has {int(outside.sum())} examples "
                    f"without a label in 0..{len(class_names) - 1} (e.g. {int(labels[outside][0])}"
                    "; glue test splits are unlabelled): use a labelled split for "
                    "config.data.tfds_train_split / tfds_heldout_split")
  return texts, labels.astype(np.int32), class_names


def _class_names(tfds, builder, name: str, label_key: str) -> tuple[str, ...]:
  features = builder.info.features
  if label_key not in features:
    raise UserError(f"tfds dataset {name!r} has no feature {label_key!r} "
                    f"(config.data.tfds_label_key); available: {', '.join(sorted(features))}")
  feature = features[label_key]
  if not isinstance(feature, tfds.features.ClassLabel):
    raise UserError(f"feature {label_key!r} of tfds dataset {name!r} is a "
                    f"{type(feature).__name__}, not a ClassLabel (config.data.tfds_label_key)")
  return tuple(feature.names)


# -------------------------------------------------------------------------------- embedded
# The 79 pydoc topics grouped by the part of the documentation they are taken from: the
# Language Reference's statements chapters (simple_stmts, compound_stmts), its expressions
# chapter, its lexical-analysis and execution-model chapters, its data-model chapter, and the
# Library Reference (built-in types, string formatting, pdb).
DOC_TOPIC_GROUPS = {
    "statements": (
        "assert assignment async augassign break class compound continue del else for "
        "function global if import nonlocal pass raise return try while with yield"),
    "expressions": (
        "atom-identifiers atom-literals attribute-references await binary bitwise booleans "
        "calls comparisons conversions dict exprlists in lambda lists operator-summary power "
        "shifting slicings subscriptions unary"),
    "lexical analysis and execution model": (
        "floating id-classes identifiers imaginary integers numbers strings dynamic-features "
        "exceptions execmodel naming"),
    "data model": (
        "attribute-access callable-types context-managers customization numeric-types "
        "objects sequence-types specialnames types"),
    "library": (
        "bltin-code-objects bltin-ellipsis-object bltin-null-object bltin-type-objects "
        "specialattrs string-methods truth typesfunctions typesmapping typesmethods "
        "typesmodules typesseq typesseq-mutable formatstrings debugger"),
}


def _topics() -> dict[str, str]:
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  return topics.topics


def _paragraphs(topic_text: str) -> list[str]:
  """A topic's paragraphs: the text between blank lines, without surrounding newlines."""
  return [p.strip("\n") for p in topic_text.split("\n\n")]


def _in_heldout(paragraph: str, heldout_fraction: float) -> bool:
  """A deterministic, order-free split: the paragraph's SHA-256 as a number in [0, 1)."""
  digest = hashlib.sha256(paragraph.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64 < heldout_fraction


def _labelled_paragraphs(min_chars: int) -> dict[str, str]:
  """Each distinct paragraph of >= min_chars non-blank characters -> its group. A paragraph
  that several topics share is one example; one shared by two groups has no single answer and
  is left out."""
  group_of_topic = {topic: group for group, topics in DOC_TOPIC_GROUPS.items()
                    for topic in topics.split()}
  topics = _topics()
  unknown = sorted(set(topics) - set(group_of_topic))
  if unknown:  # a newer CPython with new topics: refuse rather than guess their group
    raise UserError(f"pydoc_data.topics has topics without a group in labelled_text."
                    f"DOC_TOPIC_GROUPS: {', '.join(unknown)}")
  groups = collections.defaultdict(set)
  for topic in sorted(topics):
    for paragraph in _paragraphs(topics[topic]):
      if len(paragraph.strip()) >= min_chars:
        groups[paragraph].add(group_of_topic[topic])
  return {p: next(iter(g)) for p, g in groups.items() if len(g) == 1}


def embedded_doc_topics(heldout_fraction: float = 0.25, min_chars: int = 40) -> LabelledSplits:
  """Which of five parts of the CPython documentation a paragraph comes from.

  What it measures: given the start of one paragraph (the classifier sees its first
  `seq_len` tokens) of `pydoc_data.topics`, name the group of its topic, where the 79 topics
  are partitioned by hand into the five groups of `DOC_TOPIC_GROUPS` (statements,
  expressions, lexical analysis and execution model, data model, library). The labels are
  this table, not an outside annotation: the task tests whether a model tells the kinds of
  documentation prose apart from a short passage.

  Examples are the distinct paragraphs (text between blank lines) with >= `min_chars`
  non-blank characters; paragraphs repeated across topics (e.g. "compound" contains "if")
  count once, and the one paragraph shared by two groups is left out. Each paragraph goes to
  the held-out split when its SHA-256 falls below `heldout_fraction`: deterministic and the
  same on every machine. Exact duplicates never straddle the split; near-duplicates (a
  paragraph repeated with a word changed) may.

  With the defaults on CPython 3.11: 1,633 examples, 5 classes; the held-out split has ~400
  paragraphs. The majority training class is "library"; predicting it for every held-out
  paragraph scores ~25 % (`LabelledSplits.majority_baseline()` gives the exact figure).
  """
  if not 0.0 < heldout_fraction < 1.0:
    raise UserError(f"config.data.heldout_fraction={heldout_fraction} must be in (0, 1)")
  class_names = tuple(DOC_TOPIC_GROUPS)
  label_of = {name: i for i, name in enumerate(class_names)}
  splits = {True: ([], []), False: ([], [])}
  for paragraph, group in _labelled_paragraphs(min_chars).items():
    texts, labels = splits[_in_heldout(paragraph, heldout_fraction)]
    texts.append(paragraph)
    labels.append(label_of[group])
  (train_texts, train_labels), (heldout_texts, heldout_labels) = splits[False], splits[True]
  if not train_texts or not heldout_texts:
    raise UserError(f"config.data.heldout_fraction={heldout_fraction} / min_chars={min_chars} "
                    "leave a split of the embedded labelled task empty")
  return LabelledSplits(train_texts, np.array(train_labels, np.int32), heldout_texts,
                        np.array(heldout_labels, np.int32), class_names)


def pretraining_text(heldout_fraction: float = 0.25, min_chars: int = 40) -> str:
  """The embedded corpus without the held-out paragraphs of `embedded_doc_topics` (every
  occurrence of them), in the corpus's order: pre-train on this so that fine-tuning is
  evaluated on text the LM never read."""
  heldout = {p for p in _labelled_paragraphs(min_chars) if _in_heldout(p, heldout_fraction)}
  topics = _topics()
  kept = ["\n\n".join(p for p in _paragraphs(topics[t]) if p not in heldout)
          for t in sorted(topics)]
  return "\n\n".join(kept)
