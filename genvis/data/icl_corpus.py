"""A synthetic pre-training corpus of in-context-learning episodes (`config.data.source="icl"`).

Why it exists: GPT-3 (Brown et al. 2020, §1) describes in-context learning as the inner loop
of meta-learning: during pre-training the model meets many documents that each hold a small
task (its "outer loop"), and learns to infer the task from the text it has read so far. A
character model trained on the CPython docs never sees such documents at a scale where this
emerges, so here the stream is made of them directly. Each document is one *episode*:

    add the suffix:
    stone -> stonezq
    lamp -> lampzq
    ...

a one-line description followed by `input -> output` lines from one *mapping* (the per-episode
instance of a task family). The families are copy, reverse, prefix (a random 1-3 letter
prefix), suffix (likewise) and cipher (a random letter substitution on a random 5-8 letter
alphabet). The description names the family but never the hidden part (the affix, the
substitution table), so next-token loss on the later lines of an episode can only be low if
the model reads the earlier ones: that is what it learns. It is not language understanding:
the model learns these five families and the skill of copying a hidden parameter out of the
demonstrations; it does not learn new families from their description. The 10-minute CPU model
of configs/gpt_icl.py learns copy, reverse, prefix and suffix; the cipher (which needs a letter
looked up across lines) only partly: it ranks choices above chance but writes no exact answer.

Held out: a word, an affix or a cipher table is *held out* when the CRC-32 of its text is
0 mod 8 (`is_held_out`). Training and validation episodes use only the other seven eighths,
and the built-in evaluation tasks (genvis/eval/few_shot_tasks.py) only held-out ones, so no
evaluated query word is ever a training input and no evaluated mapping (affix, cipher table)
is ever used in training; a held-out word can still, rarely, be a training *output* (the
reverse or the cipher of a training word happens to spell it). The
separators below are the prompt format of genvis/eval/prompts.py, so evaluation prompts look
exactly like the beginning of a training episode.
"""

import dataclasses
import string
import zlib

import numpy as np

from genvis.errors import UserError

DESCRIPTION_SEP = "\n"  # after the description line
INPUT_OUTPUT_SEP = " -> "  # between a query and its answer
EXAMPLE_SEP = "\n"  # after every answer: the end-of-answer delimiter
EPISODE_SEP = "\n"  # an empty line between episodes

ALPHABET = string.ascii_lowercase
HELD_OUT_MODULUS = 8

DESCRIPTIONS = {
    "copy": "copy the word:",
    "reverse": "reverse the word:",
    "prefix": "add the prefix:",
    "suffix": "add the suffix:",
    "cipher": "replace each letter:",
}
FAMILIES = tuple(DESCRIPTIONS)

# Training distribution of one episode.
WORD_LENGTHS = (2, 6)  # inclusive range of word lengths
AFFIX_LENGTHS = (1, 3)
CIPHER_ALPHABET_SIZES = (5, 8)
DEMOS_PER_EPISODE = (1, 12)


def is_held_out(kind: str, text: str) -> bool:
  """Whether `text` (a word, an affix, a cipher table) is reserved for evaluation."""
  return zlib.crc32(f"{kind}:{text}".encode()) % HELD_OUT_MODULUS == 0


@dataclasses.dataclass(frozen=True)
class Mapping:
  """One instance of a task family: the description plus the hidden part a demo reveals.

  `letters` is the alphabet query words are drawn from; `table` is the cipher's output letter
  for each of `letters`, or the affix for prefix/suffix, and empty for copy/reverse.
  """
  family: str
  letters: str = ALPHABET
  table: str = ""

  @property
  def description(self) -> str:
    return DESCRIPTIONS[self.family]

  def apply(self, word: str) -> str:
    if self.family == "copy":
      return word
    if self.family == "reverse":
      return word[::-1]
    if self.family == "prefix":
      return self.table + word
    if self.family == "suffix":
      return word + self.table
    substitution = dict(zip(self.letters, self.table))
    return "".join(substitution[c] for c in word)


def _random_letters(rng: np.random.Generator, length: int, letters: str = ALPHABET) -> str:
  return "".join(letters[i] for i in rng.integers(0, len(letters), size=length))


def _draw_until(draw, kind: str, held_out: bool, what: str) -> str:
  """The first draw on the requested side of the held-out split."""
  for _ in range(10_000):
    text = draw()
    if is_held_out(kind, text) == held_out:
      return text
  raise UserError(f"could not draw a {'held-out' if held_out else 'training'} {what}; "
                  "the alphabet or length is too small")


def draw_mapping(family: str, rng: np.random.Generator, *, held_out: bool,
                 affix_length: int | None = None, cipher_size: int | None = None) -> Mapping:
  """A random mapping of `family`; the length arguments fix what training draws at random."""
  if family not in DESCRIPTIONS:
    raise UserError(f"unknown in-context task family {family!r}; known: {', '.join(FAMILIES)}")
  if family in ("copy", "reverse"):
    return Mapping(family)
  if family in ("prefix", "suffix"):
    length = affix_length or int(rng.integers(AFFIX_LENGTHS[0], AFFIX_LENGTHS[1] + 1))
    affix = _draw_until(lambda: _random_letters(rng, length), family, held_out, "affix")
    return Mapping(family, table=affix)
  size = cipher_size or int(rng.integers(CIPHER_ALPHABET_SIZES[0], CIPHER_ALPHABET_SIZES[1] + 1))

  def draw_table():
    letters = "".join(sorted(rng.choice(list(ALPHABET), size=size, replace=False)))
    outputs = "".join(rng.choice(list(ALPHABET), size=size, replace=False))
    return f"{letters}>{outputs}"

  letters, _, outputs = _draw_until(draw_table, "cipher", held_out, "cipher table").partition(">")
  return Mapping("cipher", letters=letters, table=outputs)


def draw_words(mapping: Mapping, count: int, rng: np.random.Generator, *, held_out: bool,
               length: int | None = None, exclude: frozenset = frozenset()) -> list[str]:
  """`count` distinct words over the mapping's alphabet, none in `exclude`."""
  words, tries = [], 0
  while len(words) < count:
    tries += 1
    if tries > 100 * count + 1000:
      raise UserError(f"could not draw {count} distinct {'held-out' if held_out else 'training'}"
                      f" words of length {length} over {mapping.letters!r}")
    size = length or int(rng.integers(WORD_LENGTHS[0], WORD_LENGTHS[1] + 1))
    word = _random_letters(rng, size, mapping.letters)
    if is_held_out("word", word) == held_out and word not in exclude and word not in words:
      words.append(word)
  return words


def render_example(query: str, answer: str) -> str:
  return f"{query}{INPUT_OUTPUT_SEP}{answer}{EXAMPLE_SEP}"


def render_episode(mapping: Mapping, words: list[str]) -> str:
  """Description line, then one `word -> output` line per word."""
  lines = "".join(render_example(w, mapping.apply(w)) for w in words)
  return f"{mapping.description}{DESCRIPTION_SEP}{lines}"


def episodes_text(num_episodes: int, seed: int) -> str:
  """`num_episodes` training episodes (never a held-out word or mapping), separated by an
  empty line; deterministic for `seed`."""
  rng = np.random.default_rng([seed, 0x1c1])
  episodes = []
  for _ in range(num_episodes):
    mapping = draw_mapping(FAMILIES[int(rng.integers(len(FAMILIES)))], rng, held_out=False)
    count = int(rng.integers(DEMOS_PER_EPISODE[0], DEMOS_PER_EPISODE[1] + 1))
    episodes.append(render_episode(mapping, draw_words(mapping, count, rng, held_out=False)))
  return EPISODE_SEP.join(episodes)


def load_icl_splits(data_config) -> tuple[str, str]:
  """(train_text, val_text): disjoint seeds, the same (non-held-out) distribution."""
  num_train = data_config.icl_train_episodes
  num_val = data_config.icl_val_episodes
  if num_train < 1 or num_val < 1:
    raise UserError(f"config.data.icl_train_episodes={num_train} and icl_val_episodes="
                    f"{num_val} must both be >= 1")
  seed = data_config.icl_seed
  return episodes_text(num_train, 2 * seed), episodes_text(num_val, 2 * seed + 1)
