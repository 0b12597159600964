"""Image–caption batches for contrastive training (CLIP, SigLIP) and their evaluation.

Built on `ImageBatches`, which already makes the images of training batch `step` a pure
function of (seed, step) and gives each process its rows of the global batch; this adds,
per row, the caption's token row and a `caption_ids` entry for the contrastive loss.

Captions are tokenised once, when the batches are built (`caption_tokens`, fitted on the
training captions and kept in the workdir), so a batch is array indexing, not BPE.

Several captions per image (tfds coco_captions, ~5; the digits, one per phrasing): training
row r of batch `step` reads the caption that a generator seeded with (seed, step) draws for
r, uniformly among its image's captions. An image is seen once per epoch, so each epoch pairs it with a fresh draw, and the
choice is the same on every process and on resume. Held-out batches use each image's first
caption (a fixed, comparable validation loss); retrieval uses all of them
(`retrieval_captions`, with `retrieval_text_keys` marking repeated caption texts).

`caption_ids` (the `caption_ids` argument of `genvis.nn.contrastive`): rows with equal ids are
interchangeable positives, so the loss never treats one as the other's negative (CLIP masks
those pairs out of the softmax; SigLIP counts them as positives). Two rows share an id when
  - their token rows are identical: "the digit 7" twice, or two captions equal after
    normalisation or truncation, which the text encoder cannot tell apart; or
  - they hold the same image: a batch that straddles an epoch boundary can draw an image at the
    end of one epoch and again at the start of the next, with another of its captions.
Ids are exact, not hashes (no collisions): the id of a row is the smallest global row
connected to it through such links (union-find), computed on the global batch by every
process, which then keeps its own rows. Linking is transitive, so in a rare chain (image A
with "a dog", A again with "a puppy", image B with "a dog") B's row also joins A's group; that
only removes a negative for CLIP.
"""

import numpy as np

from genvis.data import caption_tokens
from genvis.data.image_batches import ImageBatches
from genvis.errors import UserError

# Mixed into the caption draw's seed so it is independent of the augmentation draws, which
# are seeded with (seed, step) as well.
_CAPTION_STREAM = 0x43415054  # "CAPT"


class _TokenisedCaptions:
  """Every caption of a split as token rows [M, T], grouped by image: image i owns rows
  offsets[i]:offsets[i + 1]; `text_keys` [M] are equal exactly for equal token rows."""

  def __init__(self, dataset, tokenizer, max_len: int):
    lists = dataset.caption_lists()
    self.counts = np.array([len(group) for group in lists], np.int64)
    self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
    self.tokens = tokenizer.encode([text for group in lists for text in group], max_len)
    _, self.text_keys = np.unique(self.tokens, axis=0, return_inverse=True)
    self.text_keys = self.text_keys.reshape(-1)


class CaptionBatches:
  """`config.data`'s train and test splits as (image, caption) pairs, batched.

  Attributes:
    images: the underlying `ImageBatches` (its train_set / test_set are the datasets).
    tokenizer: the `caption_tokens.CaptionTokenizer` (fitted or reloaded); encode prompts and
      queries with `tokenizer.encode(texts, max_len)`.
    max_len: tokens per caption row (the text model's context length).
  """

  def __init__(self, data_config, seed: int, *, max_len: int, vocab_size: int,
               workdir: str | None = None, write_tokenizer: bool = True,
               labels: bool = False, process_index: int = 0, process_count: int = 1):
    """Loads both splits, fits (or reloads from `workdir`) the tokenizer on the training
    captions and tokenises every caption. Only the process that should write the workdir's
    files passes `write_tokenizer=True`."""
    self.images = ImageBatches(data_config, seed, labels=labels,
                               process_index=process_index, process_count=process_count)
    train_set, test_set = self.images.train_set, self.images.test_set
    for dataset, split in ((train_set, "train"), (test_set, "test")):
      if dataset.captions is None:
        raise UserError(f"config.data ({dataset.name or data_config.source}) split {split!r} "
                        "has no captions: use source digits or scenes, a folder with "
                        "captions.jsonl, or config.data.tfds_caption_key")
    self.seed = seed
    self.max_len = max_len
    train_texts = [text for group in train_set.caption_lists() for text in group]
    self.tokenizer = caption_tokens.fit_or_load(train_texts, vocab_size, workdir,
                                                write=write_tokenizer)
    self.train_captions = _TokenisedCaptions(train_set, self.tokenizer, max_len)
    self.test_captions = _TokenisedCaptions(test_set, self.tokenizer, max_len)

  @property
  def rows(self) -> slice:
    """This process's rows of every global batch."""
    return self.images.rows

  def caption_rows(self, step: int) -> np.ndarray:
    """For each row of global training batch `step`: the index of its caption among all the
    training captions (into `train_captions.tokens`)."""
    indices = self.images.train_order.train_indices(step)
    captions = self.train_captions
    first = captions.offsets[indices]
    counts = captions.counts[indices]
    if captions.counts.max() == 1:
      return first
    draws = np.random.default_rng([self.seed, step, _CAPTION_STREAM]).random(len(indices))
    return first + np.minimum((draws * counts).astype(np.int64), counts - 1)

  def train_batch(self, step: int) -> dict:
    """This process's rows of training batch `step`: images (augmented when config.data
    asks), tokens int32 [b, max_len], caption_ids int32 [b], weights (and labels)."""
    batch = self.images.train_batch(step)
    indices = self.images.train_order.train_indices(step)
    caption_rows = self.caption_rows(step)
    ids = match_groups(self.train_captions.text_keys[caption_rows], indices)
    batch["tokens"] = self.train_captions.tokens[caption_rows[self.rows]]
    batch["caption_ids"] = ids[self.rows]
    return batch

  def eval_batches(self, limit: int):
    """(index, batch) over the test split with each image's first caption, for a held-out
    contrastive loss; padding rows have weight 0 (see ImageBatches.eval_batches)."""
    captions = self.test_captions
    for index, batch in self.images.eval_batches(limit):
      indices, _ = self.images.test_order.eval_indices(index)
      caption_rows = captions.offsets[indices]
      ids = match_groups(captions.text_keys[caption_rows], indices)
      batch["tokens"] = captions.tokens[caption_rows[self.rows]]
      batch["caption_ids"] = ids[self.rows]
      yield index, batch

  def retrieval_captions(self) -> tuple[np.ndarray, np.ndarray]:
    """Every caption of the test split for retrieval (genvis.eval.retrieval): (tokens int32
    [M, max_len], text_to_image int64 [M], the test image each caption belongs to)."""
    captions = self.test_captions
    owners = np.repeat(np.arange(len(captions.counts)), captions.counts)
    return captions.tokens, owners

  def retrieval_text_keys(self) -> np.ndarray:
    """int64 [M], one per row of `retrieval_captions()`: equal exactly where the token rows
    are, i.e. where the text encoder sees the same caption (digits repeat ~60 strings over
    the test split). Pass as `retrieval.recall_at_k(..., text_keys=...)`, so a retrieved copy
    of the right caption text counts as a hit whichever image owns it."""
    return self.test_captions.text_keys.astype(np.int64)


def match_groups(text_keys, image_keys) -> np.ndarray:
  """int32 [B]: for each row, the smallest row linked to it by an equal text key or an equal
  image key, directly or through other rows (the `caption_ids` of the module doc)."""
  text_keys, image_keys = np.asarray(text_keys), np.asarray(image_keys)
  if text_keys.shape != image_keys.shape or text_keys.ndim != 1:
    raise UserError(f"match_groups: text_keys {list(text_keys.shape)} and image_keys "
                    f"{list(image_keys.shape)} must both be [B]")
  parent = list(range(len(text_keys)))

  def root(row):
    while parent[row] != row:
      parent[row] = parent[parent[row]]  # path halving
      row = parent[row]
    return row

  first_with = ({}, {})
  for row, keys in enumerate(zip(text_keys.tolist(), image_keys.tolist())):
    for seen, key in zip(first_with, keys):
      if key in seen:
        low, high = sorted((root(row), root(seen[key])))
        parent[high] = low  # the smaller row stays the root, so ids are first rows
      else:
        seen[key] = row
  return np.array([root(row) for row in range(len(parent))], np.int32)
