"""Image–caption data for contrastive training: digit captions, the caption tokenizer, and
`CaptionBatches` (token format, caption_ids for duplicates, determinism, process rows).

Real data: the embedded digits (each image captioned in all six phrasings, so a batch of 64
holds duplicates). Several captions per image: small in-memory datasets put in place of
`image_sources.load_train_test`, so every caption and every duplicate is known.
"""

import ml_collections
import numpy as np
import pytest

from genvis.data import caption_batches, caption_tokens, digit_captions, image_sources
from genvis.data import tokenizers
from genvis.errors import UserError
from genvis.eval import retrieval

MAX_LEN = 8
VOCAB_SIZE = 400


def _data_config(**overrides):
  config = image_sources.image_data_defaults()
  config.update({"batch_size": 64, **overrides})
  return ml_collections.ConfigDict(config)


@pytest.fixture(name="workdir", scope="module")
def fixture_workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("caption_run"))


@pytest.fixture(name="digit_batches", scope="module")
def fixture_digit_batches(workdir):
  return caption_batches.CaptionBatches(_data_config(), seed=3, max_len=MAX_LEN,
                                        vocab_size=VOCAB_SIZE, workdir=workdir)


def drawn_captions(batches, step):
  """The caption texts of training batch `step`: one drawn per image among all of its own."""
  flat = [text for group in batches.images.train_set.all_captions for text in group]
  return [flat[row] for row in batches.caption_rows(step)]


# ---------------------------------------------------------------------------- digit captions
def test_digits_have_captions_naming_their_label():
  config = _data_config(dataset_seed=5, max_examples=300)
  dataset = image_sources.load_image_dataset(config, "train")
  assert len(dataset.captions) == len(dataset.all_captions) == 300
  assert dataset.captions == digit_captions.digit_captions(dataset.labels, 5)
  phrasings = len(digit_captions.PHRASINGS)
  for label, first, group in zip(dataset.labels, dataset.captions, dataset.all_captions):
    # Every phrasing once, the seeded one first, each naming the image's digit.
    assert group[0] == first and len(set(group)) == len(group) == phrasings
    assert sorted(group) == sorted(digit_captions.caption_for(label, p)
                                   for p in range(phrasings))
    for text in group:
      assert {digit_captions.CLASS_NAMES[label], str(label)} & set(text.split()), text
  assert len(set(dataset.captions)) > 30  # first captions vary in phrasing too


# -------------------------------------------------------------------------------- tokenizer
@pytest.fixture(name="tokenizer", scope="module")
def fixture_tokenizer():
  captions = ["a red circle", "a blue square", "the digit 7", "a handwritten seven"] * 5
  return caption_tokens.fit(captions, VOCAB_SIZE)


def test_encode_puts_start_end_and_padding_in_place(tokenizer):
  rows = tokenizer.encode(["a red circle", "", "A  Red\tCIRCLE "], MAX_LEN)
  assert rows.shape == (3, MAX_LEN) and rows.dtype == np.int32
  body = tokenizer.bpe.encode("a red circle")
  assert 0 < len(body) <= MAX_LEN - 2
  np.testing.assert_array_equal(rows[0, 1:1 + len(body)], body)
  assert rows[0, 0] == caption_tokens.START_ID
  assert rows[0, 1 + len(body)] == caption_tokens.END_ID
  assert (rows[0, 2 + len(body):] == caption_tokens.PAD_ID).all()
  np.testing.assert_array_equal(rows[1, :2], [caption_tokens.START_ID, caption_tokens.END_ID])
  np.testing.assert_array_equal(rows[2], rows[0])  # normalised: case and whitespace
  assert tokenizer.decode(rows[0]) == "a red circle"
  # Every body token is an ordinary one: specials only where the format puts them.
  assert (rows[0, 1:1 + len(body)] >= len(caption_tokens.SPECIAL_TOKENS)).all()


def test_truncation_keeps_the_end_of_text_token(tokenizer):
  long_text = " ".join(["a blue square"] * 10)
  rows = tokenizer.encode([long_text], MAX_LEN)
  full = tokenizer.bpe.encode(long_text)
  assert len(full) > MAX_LEN
  assert rows[0, -1] == caption_tokens.END_ID
  assert (rows == caption_tokens.END_ID).sum() == 1
  np.testing.assert_array_equal(rows[0, 1:-1], full[:MAX_LEN - 2])
  with pytest.raises(UserError, match="max_len=1"):
    tokenizer.encode(["x"], 1)


@pytest.mark.parametrize("reload", [False, True])
def test_special_token_text_in_a_caption_is_ordinary_text(tokenizer, tmp_path, reload):
  if reload:  # tokenizer.json does not keep the setting: a reloaded tokenizer needs it too
    tokenizer.save(str(tmp_path / tokenizers.FILENAME))
    tokenizer = caption_tokens.fit_or_load([], VOCAB_SIZE, str(tmp_path))
  texts = ["a red <|endoftext|> circle", "<|pad|> <|startoftext|>", "<|ENDOFTEXT|>"]
  rows = tokenizer.encode(texts, 40)
  for text, row in zip(texts, rows):
    # Exactly one SOT and one EOT, where the format puts them; no PAD inside the caption.
    end = int(np.argmax(row == caption_tokens.END_ID))
    assert row[0] == caption_tokens.START_ID and (row == caption_tokens.END_ID).sum() == 1
    assert (row[1:end] >= len(caption_tokens.SPECIAL_TOKENS)).all()
    assert (row[end + 1:] == caption_tokens.PAD_ID).all()
    assert tokenizer.decode(row) == caption_tokens.normalise(text)


def test_fit_or_load_saves_then_reloads_and_checks(tmp_path):
  captions = ["the digit 7", "a handwritten seven", "the number one"]
  fitted = caption_tokens.fit_or_load(captions, VOCAB_SIZE, str(tmp_path))
  path = tmp_path / tokenizers.FILENAME
  assert path.exists() and fitted.vocab_size <= VOCAB_SIZE
  # Reloaded, not refitted: other captions would give other merges.
  reloaded = caption_tokens.fit_or_load(["zzz qqq"], VOCAB_SIZE, str(tmp_path))
  np.testing.assert_array_equal(reloaded.encode(captions, 12), fitted.encode(captions, 12))
  with pytest.raises(UserError, match="vocab_size=260"):
    caption_tokens.fit_or_load(captions, 260, str(tmp_path))
  tokenizers.CharTokenizer.fit("abc").save(str(path))
  with pytest.raises(UserError, match="'char' tokenizer"):
    caption_tokens.fit_or_load(captions, VOCAB_SIZE, str(tmp_path))
  tokenizers.BPETokenizer.fit("hello world", 300).save(str(path))  # an LM tokenizer
  with pytest.raises(UserError, match="not a caption tokenizer"):
    caption_tokens.fit_or_load(captions, VOCAB_SIZE, str(tmp_path))
  with pytest.raises(UserError, match="vocab_size=100"):
    caption_tokens.fit(captions, 100)


# ---------------------------------------------------------------------------- digit batches
def test_train_batch_shapes_and_tokens(digit_batches):
  batch = digit_batches.train_batch(7)
  assert batch["images"].shape == (64, 8, 8, 1)
  assert batch["tokens"].shape == (64, MAX_LEN) and batch["tokens"].dtype == np.int32
  assert batch["caption_ids"].shape == (64,) and batch["caption_ids"].dtype == np.int32
  np.testing.assert_array_equal(batch["weights"], np.ones(64, np.float32))
  train_set = digit_batches.images.train_set
  indices = digit_batches.images.train_order.train_indices(7)
  np.testing.assert_array_equal(batch["images"], train_set.images[indices])
  drawn = drawn_captions(digit_batches, 7)
  np.testing.assert_array_equal(batch["tokens"], digit_batches.tokenizer.encode(drawn, MAX_LEN))
  # Each row draws among its image's six captions, not always the first (1/6 would be).
  firsts = sum(text == train_set.captions[i] for text, i in zip(drawn, indices))
  assert 2 <= firsts <= 25
  assert ((batch["tokens"] == caption_tokens.END_ID).sum(axis=1) == 1).all()


def test_duplicate_captions_share_ids_and_different_ones_do_not(digit_batches):
  duplicates = 0
  for step in range(3):
    batch = digit_batches.train_batch(step)
    texts = drawn_captions(digit_batches, step)
    for a in range(64):
      for b in range(a + 1, 64):
        same = texts[a] == texts[b]
        duplicates += same
        assert (batch["caption_ids"][a] == batch["caption_ids"][b]) == same, (texts[a],
                                                                              texts[b])
    # The id of a group is its first row.
    assert all(batch["caption_ids"][row] <= row for row in range(64))
  assert duplicates > 10  # 60 distinct captions: a batch of 64 must repeat some


def test_batches_are_a_pure_function_of_the_step(digit_batches, workdir):
  again = caption_batches.CaptionBatches(_data_config(), seed=3, max_len=MAX_LEN,
                                         vocab_size=VOCAB_SIZE, workdir=workdir)
  for step in (0, 21, 500):
    first, second = digit_batches.train_batch(step), again.train_batch(step)
    assert first.keys() == second.keys()
    for key in first:
      np.testing.assert_array_equal(first[key], second[key])
  assert not np.array_equal(digit_batches.train_batch(1)["tokens"],
                            digit_batches.train_batch(2)["tokens"])


def test_process_rows_partition_the_global_batch(digit_batches, workdir):
  parts = [caption_batches.CaptionBatches(
      _data_config(), seed=3, max_len=MAX_LEN, vocab_size=VOCAB_SIZE, workdir=workdir,
      write_tokenizer=False, process_index=p, process_count=2) for p in range(2)]
  for step in (4, 21):  # 21 straddles the end of the first epoch (1,352 images)
    whole = digit_batches.train_batch(step)
    halves = [part.train_batch(step) for part in parts]
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
  (_, whole), = digit_batches.eval_batches(1)
  halves = [next(part.eval_batches(1))[1] for part in parts]
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


# ------------------------------------------------------------------- several captions each
_TRAIN_CAPTIONS = [["a cat", "A  Cat", "kitten"], ["a dog"], ["a cat", "feline"],
                   ["a bird"]]
_TEST_CAPTIONS = [["a fish", "goldfish"], ["a frog"], ["a fish"]]


def _dataset(caption_lists, name):
  images = np.linspace(-1, 1, len(caption_lists) * 4 * 4 * 3, dtype=np.float32)
  several = any(len(group) > 1 for group in caption_lists)
  return image_sources.ImageDataset(
      images=images.reshape(len(caption_lists), 4, 4, 3),
      captions=[group[0] for group in caption_lists],
      all_captions=caption_lists if several else None, name=name)


@pytest.fixture(name="multi_batches")
def fixture_multi_batches(monkeypatch):
  monkeypatch.setattr(image_sources, "load_train_test", lambda _: (
      _dataset(_TRAIN_CAPTIONS, "pets"), _dataset(_TEST_CAPTIONS, "pets")))
  return caption_batches.CaptionBatches(_data_config(batch_size=6), seed=0, max_len=MAX_LEN,
                                        vocab_size=VOCAB_SIZE)


def _expected_groups(texts, images):
  """The first row of each row's connected component, by brute-force closure."""
  linked = np.array([[ta == tb or ia == ib for tb, ib in zip(texts, images)]
                     for ta, ia in zip(texts, images)])
  while True:
    wider = (linked.astype(int) @ linked.astype(int)) > 0
    if (wider == linked).all():
      return linked.argmax(axis=1)
    linked = wider


def test_training_draws_every_caption_of_an_image_and_links_duplicates(multi_batches):
  drawn = {image: set() for image in range(4)}
  for step in range(40):
    batch = multi_batches.train_batch(step)
    indices = multi_batches.images.train_order.train_indices(step)
    texts = [multi_batches.tokenizer.decode(row) for row in batch["tokens"]]
    for image, text in zip(indices, texts):
      assert text in {caption_tokens.normalise(c) for c in _TRAIN_CAPTIONS[image]}
      drawn[int(image)].add(text)
    np.testing.assert_array_equal(batch["caption_ids"], _expected_groups(texts, indices))
  assert drawn == {0: {"a cat", "kitten"}, 1: {"a dog"}, 2: {"a cat", "feline"},
                   3: {"a bird"}}


def test_match_groups_follow_chains_of_text_and_image_links():
  ids = caption_batches.match_groups([10, 11, 10, 12, 12, 13], [5, 5, 6, 7, 8, 5])
  np.testing.assert_array_equal(ids, [0, 0, 0, 3, 3, 0])
  assert ids.dtype == np.int32


def test_eval_uses_first_captions_and_retrieval_all_of_them(multi_batches):
  (_, batch), = multi_batches.eval_batches(-1)
  np.testing.assert_array_equal(batch["weights"], [1, 1, 1, 0, 0, 0])
  texts = [multi_batches.tokenizer.decode(row) for row in batch["tokens"][:3]]
  assert texts == ["a fish", "a frog", "a fish"]
  assert batch["caption_ids"][2] == batch["caption_ids"][0] != batch["caption_ids"][1]
  tokens, owners = multi_batches.retrieval_captions()
  np.testing.assert_array_equal(owners, [0, 0, 1, 2])
  # "goldfish" is not in the training captions: one token per byte, cut to MAX_LEN - 2.
  assert [multi_batches.tokenizer.decode(row) for row in tokens] == [
      "a fish", "goldfi", "a frog", "a fish"]
  # Keys for retrieval: the two "a fish" rows (images 0 and 2) share one, the rest differ.
  keys = multi_batches.retrieval_text_keys()
  assert keys.shape == (4,) and np.issubdtype(keys.dtype, np.integer)
  assert keys[0] == keys[3] and len({keys[0], keys[1], keys[2]}) == 3


def test_digit_retrieval_keys_let_a_perfect_model_score_one(digit_batches):
  tokens, owners = digit_batches.retrieval_captions()
  keys = digit_batches.retrieval_text_keys()
  distinct_rows, row_keys = np.unique(tokens, axis=0, return_inverse=True)
  assert keys.shape == owners.shape and len(set(keys.tolist())) == len(distinct_rows)
  assert len(distinct_rows) < len(keys) / 3  # the digits' captions repeat a lot
  np.testing.assert_array_equal(keys[:, None] == keys[None, :],
                                row_keys.reshape(-1)[:, None] == row_keys.reshape(-1)[None, :])
  # A model that embeds each caption text on its own axis, and each image as the mean of its
  # own captions: an image's best texts are its captions, a text's best images own it.
  text_emb = np.eye(len(distinct_rows), dtype=np.float32)[keys]
  image_emb = np.zeros((owners.max() + 1, len(distinct_rows)), np.float32)
  np.add.at(image_emb, owners, text_emb)
  image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
  metrics = retrieval.recall_at_k(image_emb, text_emb, owners, ks=(1,), text_keys=keys)
  assert metrics["image_to_text/R@1"] == 1.0 and metrics["text_to_image/R@1"] == 1.0
  assert retrieval.recall_at_k(image_emb, text_emb, owners, ks=(1,))["text_to_image/R@1"] < 0.5


def test_data_without_captions_is_a_user_error(monkeypatch):
  plain = image_sources.ImageDataset(images=np.zeros((2, 4, 4, 1), np.float32), name="plain")
  monkeypatch.setattr(image_sources, "load_train_test", lambda _: (plain, plain))
  with pytest.raises(UserError, match="no captions"):
    caption_batches.CaptionBatches(_data_config(batch_size=2), seed=0, max_len=MAX_LEN,
                                   vocab_size=VOCAB_SIZE)
