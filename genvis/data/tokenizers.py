"""Tokenizers: character level, and byte-level BPE trained with the `tokenizers` library.

A tokenizer is fitted once on the training text, saved as `tokenizer.json` in the workdir,
and reloaded from there on resume, sampling and evaluation, so ids never drift between runs.
A run that starts from another's weights (`config.init_from`) uses that run's tokenizer
instead (`load_for_init_from`): the weights fix what each id means.

BPE stops merging when the text holds no more pairs, so a small corpus gives fewer tokens than
`config.data.bpe_vocab_size`: that size is an upper bound. A saved tokenizer with fewer tokens
is reloaded with a warning (the file does not record the size it was asked for, so a workdir
whose bpe_vocab_size was raised since looks the same); one with more is refused.
"""

import functools
import hashlib
import json
import logging
import os
import re
import shutil

import numpy as np

from genvis import atomic_files
from genvis.errors import UserError

log = logging.getLogger(__name__)

FILENAME = "tokenizer.json"

# BPE encodes and trains on long text in chunks of about this many characters: one call on a
# multi-megabyte string is slow and memory-hungry, and the chunks run in parallel.
CHUNK_CHARS = 1 << 16

# Where a chunk may end: after a non-whitespace character that ASCII whitespace follows. No
# pre-token of GPT-2's byte-level regex ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
# ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+) holds a non-whitespace character followed by a
# whitespace one, and special tokens hold no whitespace, so a cut there leaves every
# pre-token, and so the ids, as encoding the whole text gives them; whitespace runs ("\n\n",
# "\n    ") stay whole, as GPT-2 merges them. ASCII whitespace only: Python's \s also matches
# characters (\x1c-\x1f) that the tokenizer's regex may count as punctuation.
_CUT = re.compile(r"\S[ \t\n\r\f\v]")


class CharTokenizer:
  """One id per distinct character of the corpus (nanoGPT's shakespeare_char)."""

  kind = "char"

  def __init__(self, chars: str):
    self.chars = chars
    self._ids = {c: i for i, c in enumerate(chars)}

  @classmethod
  def fit(cls, text: str) -> "CharTokenizer":
    return cls("".join(sorted(set(text))))

  @property
  def vocab_size(self) -> int:
    return len(self.chars)

  def encode(self, text: str) -> np.ndarray:
    try:
      return np.fromiter((self._ids[c] for c in text), dtype=np.int32, count=len(text))
    except KeyError as e:
      raise UserError(f"character {e.args[0]!r} is not in the tokenizer's vocabulary "
                      f"({self.vocab_size} characters)") from None

  def decode(self, ids) -> str:
    return "".join(self.chars[int(i)] for i in ids if 0 <= int(i) < len(self.chars))

  def save(self, path: str):
    with open(path, "w", encoding="utf-8") as f:
      json.dump({"kind": self.kind, "chars": self.chars}, f)

  @functools.cached_property
  def fingerprint(self) -> str:
    return _fingerprint(self.kind, list(enumerate(self.chars)))


class BPETokenizer:
  """Byte-level BPE (GPT-2's scheme): any UTF-8 text encodes, nothing is out of vocabulary."""

  kind = "bpe"
  END_OF_TEXT = "<|endoftext|>"

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer

  @classmethod
  def fit(cls, text: str, vocab_size: int,
          special_tokens: tuple[str, ...] = (END_OF_TEXT,)) -> "BPETokenizer":
    """BPE merges learned from `text`; `special_tokens` take ids 0, 1, ... in order and are
    never split (CLIP's captions add start-of-text and padding tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # Chunks cut where encoding cuts them: the trainer counts the pre-tokens of the whole
    # text (so merges across newlines, "\n\n", are learned as GPT-2 learned them), in many
    # sequences rather than one huge one.
    tokenizer.train_from_iterator(chunks(text), trainer=trainer)
    return cls(tokenizer)

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size()

  def encode(self, text: str) -> np.ndarray:
    """The ids of the whole `text`, as one `tokenizers` call on it gives them (encoded in
    chunks, see CHUNK_CHARS)."""
    encodings = self._tokenizer.encode_batch(chunks(text))
    return np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    """One int32 id array per text (short texts such as captions, encoded in parallel)."""
    return [np.asarray(e.ids, np.int32) for e in self._tokenizer.encode_batch(list(texts))]

  def match_special_tokens(self, match: bool):
    """Whether a special token's text inside encoded text ("a <|endoftext|> b") becomes its
    special id (the default: GPT-2 data marks document ends so) or is encoded as ordinary
    text (captions, whose format places the specials itself). Not saved with the tokenizer."""
    self._tokenizer.encode_special_tokens = not match

  def token_id(self, token: str) -> int:
    """The id of a special token, e.g. END_OF_TEXT."""
    token_id = self._tokenizer.token_to_id(token)
    if token_id is None:
      raise UserError(f"the tokenizer has no token {token!r}")
    return token_id

  def decode(self, ids) -> str:
    """The text of `ids`, special tokens included: encode turned "<|endoftext|>" into its id,
    and a sample must show where one document ended (callers that want them gone drop their
    ids, as the caption tokenizer does)."""
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

  def save(self, path: str):
    self._tokenizer.save(path)

  @functools.cached_property
  def fingerprint(self) -> str:
    vocab = self._tokenizer.get_vocab(with_added_tokens=True)
    return _fingerprint(self.kind, sorted((i, token) for token, i in vocab.items()))


def chunks(text: str, chunk_chars: int | None = None) -> list[str]:
  """`text` cut into pieces of at least `chunk_chars` (default CHUNK_CHARS) characters, the
  last aside, each cut at a word's end (see _CUT); text without one stays whole."""
  chunk_chars = chunk_chars or CHUNK_CHARS
  pieces, start = [], 0
  while len(text) - start > chunk_chars:
    cut = _CUT.search(text, start + chunk_chars - 1)
    if cut is None:
      break
    pieces.append(text[start:cut.start() + 1])
    start = cut.start() + 1
  pieces.append(text[start:])
  return pieces


def _fingerprint(kind: str, ids_and_tokens: list[tuple[int, str]]) -> str:
  """A short sha256 of what each id means: equal for tokenizers that map ids to the same
  tokens, whichever file format or `tokenizers` version saved them (checkpoint metadata keeps
  it, so weights are never paired with another id mapping of the same size)."""
  text = json.dumps([kind, ids_and_tokens], ensure_ascii=False)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fit(data_config, train_text: str, val_text: str = ""):
  """A new tokenizer for `config.data.tokenizer`.

  The character vocabulary covers train and validation text (as nanoGPT's), so no validation
  character is unknown; BPE merges are learned from the training text alone.
  """
  kind = data_config.tokenizer
  if kind == "char":
    return CharTokenizer.fit(train_text + val_text)
  if kind == "bpe":
    if data_config.bpe_vocab_size < 257:
      raise UserError(f"config.data.bpe_vocab_size={data_config.bpe_vocab_size} must be "
                      "> 256 (the byte alphabet plus merges)")
    return BPETokenizer.fit(train_text, data_config.bpe_vocab_size)
  raise UserError(f"config.data.tokenizer={kind!r}: expected 'char' or 'bpe'")


def load(path: str):
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  if saved.get("kind") == CharTokenizer.kind:
    return CharTokenizer(saved["chars"])
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  return BPETokenizer(Tokenizer.from_file(path))


def fitted_by_this_run(config, workdir: str | None) -> bool:
  """Whether the run's tokenizer is fitted now: not `fit_or_load`'s reload of the workdir's
  (a resume, an imported checkpoint's workdir), nor config.init_from's. Ask before fitting:
  the fit saves it to the workdir."""
  return not config.init_from and not (
      workdir and os.path.exists(os.path.join(workdir, FILENAME)))


def fit_or_load(data_config, train_text: str, val_text: str, workdir: str | None,
                write: bool = True):
  """The workdir's saved tokenizer if there is one, else a new one fitted (and saved when
  `write`: only process 0 writes; every process fits the same tokenizer deterministically)."""
  path = os.path.join(workdir, FILENAME) if workdir else None
  if path and os.path.exists(path):
    tokenizer = _check_matches(load(path), data_config, path)
    _check_covers(tokenizer, (train_text, val_text), data_config, path,
                  "it was fitted on other text: use a new workdir or that text")
    return tokenizer
  tokenizer = fit(data_config, train_text, val_text)
  if path and write:
    with atomic_files.replacing(path) as temporary:
      tokenizer.save(temporary)
  return tokenizer


def _check_matches(tokenizer, data_config, path: str):
  """A workdir's tokenizer must be the one the config asks for (BPE: at most
  `bpe_vocab_size` tokens, as fitting stops early on text with too few pairs)."""
  if tokenizer.kind != data_config.tokenizer:
    raise UserError(f"{path} is a {tokenizer.kind!r} tokenizer but config.data.tokenizer="
                    f"{data_config.tokenizer!r}; use a new workdir")
  if tokenizer.kind == "bpe" and tokenizer.vocab_size > data_config.bpe_vocab_size:
    raise UserError(f"{path} has {tokenizer.vocab_size} tokens, more than config.data."
                    f"bpe_vocab_size={data_config.bpe_vocab_size}; use a new workdir or the "
                    "bpe_vocab_size it was fitted with")
  if tokenizer.kind == "bpe" and tokenizer.vocab_size < data_config.bpe_vocab_size:
    log.warning("%s has %d tokens, fewer than config.data.bpe_vocab_size=%d: using it (its "
                "text ran out of pairs to merge, or bpe_vocab_size was raised since; a new "
                "workdir fits a new one)", path, tokenizer.vocab_size,
                data_config.bpe_vocab_size)
  return tokenizer


def _check_covers(tokenizer, texts, data_config, path: str, remedy: str):
  """A saved character tokenizer must know every character of this run's text; else the
  text is not the one it was fitted on, and encoding would fail far from the cause."""
  if tokenizer.kind != CharTokenizer.kind:
    return  # byte-level BPE encodes any text
  known = set(tokenizer.chars)
  missing = sorted(set().union(*map(set, texts)) - known)
  if missing:
    raise UserError(f"{path} lacks {len(missing)} character(s) of the text of "
                    f"{_text_source(data_config)}, e.g. {missing[0]!r}; {remedy}")


def _text_source(data_config) -> str:
  source = data_config.get("source")
  if source == "file":
    return f"config.data.path={data_config.get('path')!r}"
  return f"config.data.source={source!r}"


def load_for_init_from(data_config, init_from: str, workdir: str | None, write: bool = True,
                       cover: tuple[str, ...] = ()):
  """The tokenizer of a run that starts from another's weights (`config.init_from`): this
  run's saved one if it has one (a resume), else the other run's, copied into this workdir
  (when `write`).

  The weights fix the token ids, so config.data's tokenizer keys are set to the tokenizer's
  (an imported GPT-2's 50257 BPE tokens, say), whatever the config's defaults. A character
  tokenizer must know every character of the texts in `cover` (none: the caller drops
  unknown characters itself).
  """
  own = os.path.join(workdir, FILENAME) if workdir else None
  has_own = own is not None and os.path.exists(own)
  source = own if has_own else os.path.join(_workdir_with_tokenizer(init_from), FILENAME)
  tokenizer = load(source)
  _check_covers(tokenizer, cover, data_config, source,
                "config.init_from's weights know only its characters: use text it covers")
  data_config.tokenizer = tokenizer.kind
  if tokenizer.kind == BPETokenizer.kind:
    data_config.bpe_vocab_size = tokenizer.vocab_size
  if own and write and not has_own:
    with atomic_files.replacing(own) as temporary:
      shutil.copyfile(source, temporary)
  return tokenizer


def _workdir_with_tokenizer(init_from: str) -> str:
  """The workdir holding tokenizer.json, for init_from = a workdir, its checkpoints folder
  or one checkpoint (workdir/checkpoints/<step>)."""
  path = os.path.abspath(init_from)
  for candidate in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
    if os.path.isfile(os.path.join(candidate, FILENAME)):
      return candidate
  raise UserError(f"config.init_from={init_from!r}: no {FILENAME} in it or in the two "
                  "folders above it; point it at a genvis run's workdir or checkpoint")
