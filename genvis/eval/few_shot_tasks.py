"""In-context evaluation tasks: the data model, a JSONL format for users' tasks, built-ins.

A task is what GPT-3 (Brown et al. 2020, §2) evaluates in context: a natural-language
description, a pool of demonstrations to condition on, and the queries to answer. Each query
is either free-form (scored by greedy generation + exact match) or multiple choice (scored by
the likelihood of each choice). genvis/eval/prompts.py turns a task into prompts.

JSONL format (one JSON object per line; blank lines are skipped):

    {"description": "translate english to french:"}          optional, first line only
    {"query": "cheese", "answer": "fromage"}                  free-form
    {"query": "2 + 2 =", "choices": ["3", "4"], "correct": 1} multiple choice
    {"query": "...", "answer": "...", "split": "demo"}        optional split: demo | eval

A task is all free-form or all multiple choice. Lines without "split" serve as both
demonstrations and queries (a query is never its own demonstration); "demo" lines only as
demonstrations, "eval" lines only as queries.

Built-in tasks (`builtin_task`) are the families of the synthetic pre-training corpus
(genvis/data/icl_corpus.py) with a fixed *held-out* mapping and held-out 4-letter words, so a
model trained on that corpus has never seen the evaluated affix or substitution table, nor a
query word. Each is deterministic for its seed ("builtin:suffix@3" picks another mapping).
"""

import dataclasses
import json
import os
import zlib

import numpy as np

from genvis.data import icl_corpus
from genvis.errors import UserError


@dataclasses.dataclass(frozen=True)
class Example:
  """One query and its correct completion; multiple choice adds the candidates."""
  query: str
  answer: str  # multiple choice: choices[correct]
  choices: tuple[str, ...] = ()
  correct: int = -1

  @classmethod
  def multiple_choice(cls, query: str, choices, correct: int) -> "Example":
    return cls(query, choices[correct], tuple(choices), correct)


@dataclasses.dataclass(frozen=True)
class FewShotTask:
  """A description, the pool demonstrations are drawn from, and the queries to score."""
  name: str
  description: str
  demonstrations: tuple[Example, ...]
  queries: tuple[Example, ...]

  @property
  def multiple_choice(self) -> bool:
    return bool(self.queries[0].choices)

  def with_num_queries(self, num_queries: int) -> "FewShotTask":
    """The first `num_queries` queries (0: all)."""
    if num_queries <= 0:
      return self
    return dataclasses.replace(self, queries=self.queries[:num_queries])


# ------------------------------------------------------------------------------------ JSONL
_EXAMPLE_KEYS = {"query", "answer", "choices", "correct", "split"}


def _parse_example(record: dict, where: str) -> tuple[Example, str]:
  """(example, split) from one JSON object; `where` is "path:line" for errors."""
  unknown = sorted(set(record) - _EXAMPLE_KEYS)
  if unknown:
    raise UserError(f"{where}: unknown key {unknown[0]!r}; expected query, answer or "
                    "choices + correct, and optionally split")
  if not isinstance(record.get("query"), str):
    raise UserError(f"{where}: key 'query' must be a string")
  split = record.get("split", "both")
  if split not in ("demo", "eval", "both"):
    raise UserError(f"{where}: key 'split'={split!r}: expected 'demo' or 'eval'")
  if "choices" in record:
    choices, correct = record["choices"], record.get("correct")
    if "answer" in record:
      raise UserError(f"{where}: give either 'answer' or 'choices' + 'correct', not both")
    if (not isinstance(choices, list) or len(choices) < 2
        or not all(isinstance(c, str) for c in choices)):
      raise UserError(f"{where}: key 'choices' must be a list of at least 2 strings")
    if not isinstance(correct, int) or isinstance(correct, bool) or not (
        0 <= correct < len(choices)):
      raise UserError(f"{where}: key 'correct' must be an index into 'choices' "
                      f"(0..{len(choices) - 1}), got {correct!r}")
    return Example.multiple_choice(record["query"], choices, correct), split
  if not isinstance(record.get("answer"), str):
    raise UserError(f"{where}: key 'answer' must be a string (or give 'choices' + 'correct')")
  return Example(record["query"], record["answer"]), split


def load_jsonl_task(path: str, name: str | None = None) -> FewShotTask:
  """A task from a JSONL file (format in the module docstring)."""
  if not os.path.isfile(path):
    raise UserError(f"few-shot task file {path!r}: no such file")
  description, parsed = "", []
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      where = f"{path}:{line_number}"
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg})") from None
      if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
      if "description" in record:
        if parsed or description or set(record) != {"description"}:
          raise UserError(f"{where}: key 'description' must be alone on the first line")
        if not isinstance(record["description"], str):
          raise UserError(f"{where}: key 'description' must be a string")
        description = record["description"]
        continue
      example, split = _parse_example(record, where)
      if parsed and bool(example.choices) != bool(parsed[0][0].choices):
        raise UserError(f"{where}: mixes multiple-choice and free-form examples; a task "
                        "must be one or the other")
      parsed.append((example, split))
  demonstrations = tuple(e for e, split in parsed if split != "eval")
  queries = tuple(e for e, split in parsed if split != "demo")
  if not queries:
    raise UserError(f"{path}: no queries (lines without split or with split 'eval')")
  name = name or os.path.splitext(os.path.basename(path))[0]
  return FewShotTask(name, description, demonstrations, queries)


# --------------------------------------------------------------------------------- built-in
BUILTIN_TASKS = ("copy", "reverse", "prefix", "suffix", "cipher", "cipher_choice")
WORD_LENGTH = 4  # every built-in query is a 4-letter word: prompts of one length per k
AFFIX_LENGTH = 2
CIPHER_SIZE = 7  # letters the substitution is defined on (and words are drawn from)
NUM_CHOICES = 4


def builtin_task(name: str, *, num_queries: int = 100, pool_size: int = 48,
                 seed: int = 0) -> FewShotTask:
  """A built-in task on a held-out mapping; `seed` picks the mapping and the words."""
  family = "cipher" if name == "cipher_choice" else name
  if name not in BUILTIN_TASKS:
    raise UserError(f"unknown built-in few-shot task {name!r}; known: "
                    f"{', '.join(BUILTIN_TASKS)}")
  rng = np.random.default_rng([seed, zlib.crc32(family.encode())])
  mapping = icl_corpus.draw_mapping(family, rng, held_out=True, affix_length=AFFIX_LENGTH,
                                    cipher_size=CIPHER_SIZE)
  words = icl_corpus.draw_words(mapping, pool_size + num_queries, rng, held_out=True,
                                length=WORD_LENGTH)
  if name == "cipher_choice":
    examples = [_cipher_choice(mapping, word, rng) for word in words]
  else:
    examples = [Example(word, mapping.apply(word)) for word in words]
  label = name if seed == 0 else f"{name}@{seed}"
  return FewShotTask(label, mapping.description, tuple(examples[:pool_size]),
                     tuple(examples[pool_size:]))


def _cipher_choice(mapping, word: str, rng) -> Example:
  """The word under the task's substitution and under NUM_CHOICES - 1 other random ones."""
  answer = mapping.apply(word)
  choices = [answer]
  while len(choices) < NUM_CHOICES:
    outputs = "".join(rng.choice(list(icl_corpus.ALPHABET), size=len(mapping.letters),
                                 replace=False))
    distractor = dataclasses.replace(mapping, table=outputs).apply(word)
    if distractor not in choices:
      choices.append(distractor)
  order = rng.permutation(NUM_CHOICES)
  return Example.multiple_choice(word, [choices[i] for i in order],
                                 int(np.argmax(order == 0)))


def load_task(spec: str, num_queries: int = 0) -> FewShotTask:
  """'builtin:NAME[@SEED]' or 'file:PATH.jsonl' -> the task, with at most `num_queries`
  queries (0: all of a file's, 100 of a built-in's)."""
  kind, _, rest = spec.partition(":")
  if kind == "builtin":
    name, _, seed = rest.partition("@")
    if seed and not seed.isdigit():
      raise UserError(f"task {spec!r}: the seed after '@' must be a non-negative integer")
    return builtin_task(name, num_queries=num_queries or 100, seed=int(seed or 0))
  if kind == "file":
    return load_jsonl_task(rest).with_num_queries(num_queries)
  raise UserError(f"task {spec!r}: expected 'builtin:NAME' ({', '.join(BUILTIN_TASKS)}) or "
                  "'file:PATH.jsonl'")
