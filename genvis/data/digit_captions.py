"""Captions for the embedded handwritten digits, so CLIP can train on them offline.

Why: CLIP needs image–caption pairs. The digits (genvis/data/digits.py) come with labels
only, so each image gets short captions that name its digit, in a few phrasings
("a handwritten seven", "the digit 7", "an image of a 7", ...). Several phrasings, half with
the word and half with the numeral, make the text encoder learn that "seven" and "7" mean the
same class instead of memorising one string per class; zero-shot classification then uses
the words (`CLASS_NAMES`) in prompts (genvis/eval/zero_shot.py).

Every phrasing is a caption of every image (`all_digit_captions`), as COCO gives each image
five, so training draws a phrasing afresh each time it shows an image. With one fixed phrasing
per image, the phrasing itself identified the training image: CLIP learnt which training
seven came with "the digit 7" and which with "a handwritten seven" (training loss 0.1 against
a held-out 7.7 after 1,000 steps), and its features probed worse than raw pixels.

Determinism: the first caption of image `index` (`digit_captions`), the one held-out batches
use, has a phrasing that is a function of `(seed, index)` alone (a
`np.random.SeedSequence([seed, index])` draw, which numpy keeps stable across versions), so
a dataset's captions are reproducible and caption `i` does not depend on how many images are
captioned (keeping the first N with `max_examples` keeps their captions).
"""

import numpy as np

from genvis.errors import UserError

# The digit words, in class-id order: the class names that zero-shot prompts fill in.
CLASS_NAMES = ("zero", "one", "two", "three", "four",
               "five", "six", "seven", "eight", "nine")

# {word}: "seven"; {numeral}: "7"; {a_numeral}: "a 7" / "an 8" (the article follows how the
# numeral is read, so "an image of an 8").
PHRASINGS = (
    "a handwritten {word}",
    "the digit {numeral}",
    "a picture of the number {word}",
    "an image of {a_numeral}",
    "the number {word}",
    "a handwritten digit {numeral}",
)


def _article(word: str) -> str:
  # By sound, not spelling: "a one" ("wun"), "an eight", the only digit word that starts
  # with a vowel sound.
  return "an" if word == "eight" else "a"


def phrasing_index(seed: int, index: int) -> int:
  """Which of `PHRASINGS` captions image `index` of a dataset with this seed."""
  state = np.random.SeedSequence([seed, index]).generate_state(1)[0]
  return int(state % len(PHRASINGS))


def caption_for(label: int, phrasing: int) -> str:
  """The caption of digit `label` in phrasing `phrasing` (an index into `PHRASINGS`)."""
  word = CLASS_NAMES[label]
  return PHRASINGS[phrasing].format(word=word, numeral=str(label),
                                    a_numeral=f"{_article(word)} {label}")


def digit_captions(labels, seed: int) -> list[str]:
  """One caption per digit label, its phrasing picked by (seed, position in `labels`).

  Args:
    labels: int class ids [N] in 0..9.
    seed: a non-negative int (use `config.data.dataset_seed`).

  Returns:
    N captions; caption i names digit labels[i] as a word or a numeral.

  Raises:
    UserError: labels not a 1-D integer array in 0..9, or a bad seed.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
    raise UserError(f"digit_captions: labels have shape {list(labels.shape)} and dtype "
                    f"{labels.dtype}; expected integer class ids [N]")
  if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
    raise UserError(f"digit_captions: labels span {labels.min()}..{labels.max()}; expected "
                    f"digits 0..{len(CLASS_NAMES) - 1}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise UserError(f"digit_captions: seed={seed!r}; expected a non-negative int")
  return [caption_for(int(label), phrasing_index(int(seed), index))
          for index, label in enumerate(labels)]


def all_digit_captions(labels, seed: int) -> list[list[str]]:
  """Every phrasing of each image's digit, `digit_captions(labels, seed)[i]` first and the
  other phrasings after it in `PHRASINGS` order (arguments and errors as there)."""
  groups = []
  for first, label in zip(digit_captions(labels, seed), np.asarray(labels)):
    every = [caption_for(int(label), phrasing) for phrasing in range(len(PHRASINGS))]
    groups.append([first] + [caption for caption in every if caption != first])
  return groups
