"""Digit captions: reproducible from (seed, index), several phrasings, each naming its digit."""

import numpy as np
import pytest

from genvis.data import digit_captions
from genvis.errors import UserError

LABELS = np.arange(200, dtype=np.int32) % 10


def test_same_seed_same_captions_other_seed_differs():
  a = digit_captions.digit_captions(LABELS, seed=0)
  assert a == digit_captions.digit_captions(LABELS, seed=0)
  assert a != digit_captions.digit_captions(LABELS, seed=1)


def test_caption_i_depends_only_on_seed_and_index():
  full = digit_captions.digit_captions(LABELS, seed=3)
  assert digit_captions.digit_captions(LABELS[:17], seed=3) == full[:17]
  assert full[42] == digit_captions.caption_for(
      int(LABELS[42]), digit_captions.phrasing_index(3, 42))


def test_every_phrasing_is_used_and_every_caption_names_its_digit():
  captions = digit_captions.digit_captions(LABELS, seed=0)
  used = {digit_captions.phrasing_index(0, i) for i in range(len(LABELS))}
  assert used == set(range(len(digit_captions.PHRASINGS)))
  assert len(set(captions)) > 20
  for label, text in zip(LABELS, captions):
    words = text.split()
    names = {digit_captions.CLASS_NAMES[label], str(label)}
    assert names & set(words), text
    # No other digit is named.
    others = set(digit_captions.CLASS_NAMES) | {str(d) for d in range(10)}
    assert not (others - names) & set(words), text


def test_phrasings_and_articles():
  assert digit_captions.caption_for(7, 0) == "a handwritten seven"
  assert digit_captions.caption_for(7, 1) == "the digit 7"
  assert digit_captions.caption_for(8, 3) == "an image of an 8"
  assert digit_captions.caption_for(7, 3) == "an image of a 7"
  assert digit_captions.caption_for(1, 3) == "an image of a 1"  # "a one", not "an one"
  assert digit_captions.CLASS_NAMES[0] == "zero" and len(digit_captions.CLASS_NAMES) == 10


def test_all_captions_hold_every_phrasing_with_the_seeded_one_first():
  groups = digit_captions.all_digit_captions(LABELS, seed=3)
  assert [group[0] for group in groups] == digit_captions.digit_captions(LABELS, seed=3)
  every = [digit_captions.caption_for(7, p) for p in range(len(digit_captions.PHRASINGS))]
  assert sorted(groups[7]) == sorted(every) and groups[7][1:] == [c for c in every
                                                                    if c != groups[7][0]]
  with pytest.raises(UserError, match="digit_captions: labels span"):
    digit_captions.all_digit_captions([11], seed=0)


@pytest.mark.parametrize("labels, seed", [([3, 10], 0), ([-1], 0), ([[1]], 0),
                                          ([1.5], 0), ([1], -1), ([1], True)])
def test_bad_input_is_a_user_error(labels, seed):
  with pytest.raises(UserError, match="digit_captions"):
    digit_captions.digit_captions(labels, seed)
