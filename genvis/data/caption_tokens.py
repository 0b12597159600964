"""Captions as CLIP's text encoder reads them: normalised, BPE-tokenised, fixed length.

Why a module of its own: training captions, retrieval captions and zero-shot prompts must all
become token rows in exactly one way, or the text encoder sees prompts in a format it never
trained on. Everything CLIP turns into tokens goes through `CaptionTokenizer.encode`.

Format of one caption (CLIP's): `[SOT, bpe(normalise(text))..., EOT, PAD, ...]`, `max_len`
tokens. A caption too long for `max_len` loses its last BPE tokens, never its EOT, so every
row has exactly one EOT, at position min(len + 1, max_len - 1); the text encoder (causal, as
CLIP's) reads the caption's feature there: `jnp.argmax(tokens == END_ID, axis=-1)`.

Special tokens take the first ids, so they do not move when the vocabulary grows: PAD = 0 (a
zero-filled array is padding; attention masks are `tokens != PAD_ID`), SOT = 1, EOT = 2. Only
the format places them: a caption that contains their text ("a red <|endoftext|> circle",
scraped web captions do) is encoded as ordinary bytes, never as a special id, or the row would
hold two EOTs (EOT pooling reads the first) or a PAD inside the caption.

Normalisation (`normalise`): lower case, runs of whitespace collapsed to one space, ends
stripped, as CLIP's `basic_clean` + `whitespace_clean` + `lower`. It is applied before BPE is
fitted, before encoding, and therefore before duplicates are detected, so "A dog." and
"a  dog." are one caption.

The tokenizer is fitted once, on the training captions, saved as `workdir/tokenizer.json`
and reloaded from there on resume (`fit_or_load`), so token ids never drift within a run.
BPE stops merging when the captions hold no more pairs, so a small caption set (digits: a few
dozen words) gives fewer tokens than `vocab_size`; the text model's embedding table should
have `vocab_size` rows, an upper bound on every id.
"""

import os

import numpy as np

from genvis import atomic_files
from genvis.data import tokenizers
from genvis.errors import UserError

SPECIAL_TOKENS = ("<|pad|>", "<|startoftext|>", tokenizers.BPETokenizer.END_OF_TEXT)
PAD_ID, START_ID, END_ID = 0, 1, 2
# The byte alphabet of byte-level BPE plus the special tokens: no merges at all below this.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def normalise(text: str) -> str:
  """Lower case, whitespace runs collapsed to one space, stripped."""
  return " ".join(text.lower().split())


class CaptionTokenizer:
  """A byte-level BPE tokenizer with CLIP's special tokens; encodes to [N, max_len] rows."""

  def __init__(self, bpe: tokenizers.BPETokenizer, source: str = "the tokenizer"):
    for expected_id, token in enumerate(SPECIAL_TOKENS):
      try:
        found_id = bpe.token_id(token)
      except UserError:
        found_id = None
      if found_id != expected_id:
        raise UserError(f"{source} is not a caption tokenizer: it lacks {token!r} at id "
                        f"{expected_id}; use a new workdir")
    # A tokenizer setting that tokenizer.json does not keep, so it is set here, on every fit
    # and every reload.
    bpe.match_special_tokens(False)
    self.bpe = bpe

  @property
  def vocab_size(self) -> int:
    return self.bpe.vocab_size

  def encode(self, texts, max_len: int) -> np.ndarray:
    """int32 [len(texts), max_len]: each text normalised, in the format of the module doc."""
    if isinstance(texts, str):
      raise UserError("CaptionTokenizer.encode takes a list of texts, not one string")
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 2:
      raise UserError(f"caption max_len={max_len!r}: expected an int >= 2 (start and end of "
                      "text)")
    rows = np.full((len(texts), max_len), PAD_ID, np.int32)
    if not len(texts):
      return rows
    pieces = self.bpe.encode_batch([normalise(text) for text in texts])
    for row, piece in zip(rows, pieces):
      body = piece[:max_len - 2]  # room for SOT and EOT
      row[0] = START_ID
      row[1:1 + len(body)] = body
      row[1 + len(body)] = END_ID
    return rows

  def decode(self, row) -> str:
    """The text of one token row (special tokens dropped)."""
    return self.bpe.decode([int(i) for i in row if int(i) >= len(SPECIAL_TOKENS)])

  def save(self, path: str):
    with atomic_files.replacing(path) as temporary:
      self.bpe.save(temporary)


def fit(captions, vocab_size: int) -> CaptionTokenizer:
  """A new tokenizer whose merges are learned from the normalised `captions`."""
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
      or vocab_size < MIN_VOCAB_SIZE:
    raise UserError(f"caption vocab_size={vocab_size!r}: expected an int >= {MIN_VOCAB_SIZE} "
                    f"(the 256 byte tokens and {len(SPECIAL_TOKENS)} special tokens)")
  if not captions:
    raise UserError("no training captions to fit the caption tokenizer on")
  # One caption per line: BPE never merges across captions.
  text = "\n".join(normalise(caption) for caption in captions)
  return CaptionTokenizer(tokenizers.BPETokenizer.fit(text, int(vocab_size),
                                                      special_tokens=SPECIAL_TOKENS))


def fit_or_load(train_captions, vocab_size: int, workdir: str | None,
                write: bool = True) -> CaptionTokenizer:
  """The workdir's `tokenizer.json` if there is one, else a new tokenizer fitted on
  `train_captions` (and saved there when `write`: only process 0 writes; every process fits
  the same tokenizer, deterministically, from the same captions).

  Raises:
    UserError: a saved tokenizer without the caption special tokens, or with more tokens than
      `vocab_size` (the run that wrote it asked for a larger vocabulary).
  """
  path = os.path.join(workdir, tokenizers.FILENAME) if workdir else None
  if path and os.path.exists(path):
    loaded = tokenizers.load(path)
    if not isinstance(loaded, tokenizers.BPETokenizer):
      raise UserError(f"{path} is a {loaded.kind!r} tokenizer, not a caption BPE tokenizer; "
                      "use a new workdir")
    tokenizer = CaptionTokenizer(loaded, source=path)
    if tokenizer.vocab_size > vocab_size:
      raise UserError(f"{path} has {tokenizer.vocab_size} tokens, more than the vocab_size="
                      f"{vocab_size} asked for; use a new workdir or the old vocab_size")
    return tokenizer
  tokenizer = fit(train_captions, vocab_size)
  if path and write:
    tokenizer.save(path)
  return tokenizer
