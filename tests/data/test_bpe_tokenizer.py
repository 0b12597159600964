"""Byte-level BPE: chunked encoding and training equal one call on the whole text; specials
survive decoding."""

import numpy as np
import pytest

from genvis.data import tokenizers

END = tokenizers.BPETokenizer.END_OF_TEXT

# Whitespace runs that GPT-2 merges across newlines, tabs, non-ASCII text, characters that
# Python calls whitespace but GPT-2's regex does not (\x1c-\x1f), Unicode spaces that both
# do (\x85, \xa0, \u3000), and special tokens next to text and to whitespace.
TEXTS = (
    "def f():\n\n    return 1\n\n  x = 2\n",
    "class A:\n\tdef g(self):\n\t\treturn {'a': [1, 2]}  \n\n\n# done\t \n",
    f"first doc.{END}\n\nsecond  doc {END} third{END}{END}  \n{END}",
    "naïve café ✓ 日本語 テキスト\n\n  ünïcödé!\u3000x \x85 y\xa0 z",
    "a!\x1c b\x1d\n\x1e  c\x1f\n",
    "   \n\n\t  leading and trailing whitespace \n \n\n   ",
    "",
)


def _corpus() -> str:
  body = "".join(TEXTS) + "\n\n".join(f"line {i}:\n    value = {i * 7}\n" for i in range(200))
  return body * 3


@pytest.fixture(scope="module", name="bpe")
def fixture_bpe():
  """A GPT-2-style tokenizer trained by `tokenizers` on the whole corpus in one sequence, so
  it holds merges of whitespace runs across newlines ("\\n\\n", "\\n    ")."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[END], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator([_corpus()], trainer=trainer)
  vocab = tokenizer.get_vocab()
  assert "ĊĊ" in vocab and "ĊĠĠĠ" in vocab  # "\n\n", "\n   ": the merges at stake
  return tokenizers.BPETokenizer(tokenizer)


@pytest.mark.parametrize("chunk_chars", [1, 2, 5, 16, 1 << 16])
def test_encode_equals_one_call_on_the_whole_text_however_it_is_chunked(
    bpe, monkeypatch, chunk_chars):
  monkeypatch.setattr(tokenizers, "CHUNK_CHARS", chunk_chars)
  for text in (*TEXTS, "".join(TEXTS), _corpus()):
    pieces = tokenizers.chunks(text)
    assert "".join(pieces) == text
    if chunk_chars <= 16 and len(text) > 200:
      assert len(pieces) > 10  # the cuts are really made
    expected = bpe._tokenizer.encode(text).ids  # pylint: disable=protected-access
    np.testing.assert_array_equal(bpe.encode(text), expected, err_msg=repr(text[:60]))


def test_chunks_end_after_a_non_whitespace_character_before_ascii_whitespace():
  text = "ab  cd\n\nef\x1cgh\x1c ij\t"
  pieces = tokenizers.chunks(text, 1)
  # Not after "\x1c": Python's \s matches it, but GPT-2's regex reads it as punctuation.
  assert pieces == ["ab", "  cd", "\n\nef\x1cgh\x1c ij", "\t"]
  assert tokenizers.chunks("x" * 50, 4) == ["x" * 50]  # no word end: one piece


def test_fit_learns_merges_across_newlines_and_chunking_does_not_change_them(monkeypatch):
  fitted = tokenizers.BPETokenizer.fit(_corpus(), 400)
  assert "ĊĊ" in fitted._tokenizer.get_vocab()  # pylint: disable=protected-access
  monkeypatch.setattr(tokenizers, "CHUNK_CHARS", 3)
  small_chunks = tokenizers.BPETokenizer.fit(_corpus(), 400)
  assert small_chunks.fingerprint == fitted.fingerprint


def test_decode_keeps_special_tokens_so_samples_show_document_ends(bpe):
  text = f"a {END} b{END}\n\nc"
  ids = bpe.encode(text)
  assert list(ids).count(bpe.token_id(END)) == 2  # each one token, not its characters
  assert bpe.decode(ids) == text
