"""The synthetic in-context-learning corpus (config.data.source="icl")."""

import ml_collections
import pytest

from genvis.data import icl_corpus, text_sources
from genvis.errors import UserError


def icl_config(**overrides):
  return ml_collections.ConfigDict({"source": "icl", "icl_train_episodes": 60,
                                    "icl_val_episodes": 10, "icl_seed": 0, **overrides})


def parse(text):
  """[(description, [(input, output), ...]), ...] from episodes separated by empty lines."""
  episodes = []
  for block in text.split("\n\n"):
    description, *lines = block.strip("\n").split("\n")
    episodes.append((description, [tuple(line.split(" -> ")) for line in lines]))
  return episodes


def test_icl_source_is_seeded_with_disjoint_train_and_val():
  train, val = text_sources.load_text_splits(icl_config())
  assert (train, val) == text_sources.load_text_splits(icl_config())
  assert train != text_sources.load_text_splits(icl_config(icl_seed=1))[0]
  assert len(parse(train)) == 60 and len(parse(val)) == 10
  assert parse(train)[:10] != parse(val)  # different seeds, not a copy
  with pytest.raises(UserError, match="config.data.icl_train_episodes=0"):
    text_sources.load_text_splits(icl_config(icl_train_episodes=0))


def test_every_episode_follows_one_hidden_mapping_of_its_family():
  families = {v: k for k, v in icl_corpus.DESCRIPTIONS.items()}
  seen = set()
  for description, pairs in parse(icl_corpus.episodes_text(200, seed=3)):
    family = families[description]
    seen.add(family)
    assert pairs and all(icl_corpus.WORD_LENGTHS[0] <= len(w) <= icl_corpus.WORD_LENGTHS[1]
                         for w, _ in pairs)
    if family == "copy":
      assert all(w == o for w, o in pairs)
    elif family == "reverse":
      assert all(w[::-1] == o for w, o in pairs)
    elif family in ("prefix", "suffix"):
      affixes = {o[:len(o) - len(w)] if family == "prefix" else o[len(w):] for w, o in pairs}
      assert len(affixes) == 1 and 1 <= len(affixes.pop()) <= 3
      assert all(o.startswith(w) or o.endswith(w) for w, o in pairs)
    else:  # one substitution table for the whole episode
      table = {}
      for w, o in pairs:
        for a, b in zip(w, o):
          assert table.setdefault(a, b) == b
  assert seen == set(icl_corpus.FAMILIES)
