"""Image–text retrieval: recall@k in both directions, from embeddings.

Why: CLIP (and any two-tower image–text model) is judged by how well each side retrieves the
other, as in the CLIP paper's Flickr30k / MS-COCO tables. This module takes numpy embeddings
(never a model), so any encoder pair or baseline goes through the same code.

Definitions (the standard ones, as in the COCO 5k retrieval protocol):
  - similarity is the cosine: both sides are L2-normalised here (a no-op for embeddings that
    already are), then dotted;
  - text → image: each caption is a query over all images; it is a hit at k if its own image
    is among the k most similar images;
  - image → text: each image is a query over all captions; it is a hit at k if ANY of its
    captions is among the k most similar captions (COCO has 5 per image). Images without a
    caption are not image → text queries, but stay as candidates (distractors) for
    text → image; the dict reports how many queries each direction had.

Repeated captions (`text_keys`): when many images share one caption string (digits: 2,670
test captions, each of 60 strings about 45 times), the identical captions have identical
embeddings, so the tie rule below ranks the earliest copy first and even a perfect model
misses most queries. With `text_keys` (int [Nt], equal keys = identical caption text) a
retrieved candidate counts as a hit when its text is the right one, whoever owns it:
  - text → image: a hit at k if some image among the top k owns a caption with the query's
    key;
  - image → text: a hit at k if some caption among the top k has the key of one of the
    image's own captions.
Without `text_keys` every text is its own key, which gives exactly the definitions above.

Ties: candidates are ranked by descending similarity, and exactly equal similarities keep
index order (what a stable argsort of -similarity gives): a candidate's 0-based rank is the
number of candidates with a strictly higher similarity plus the number with an equal one at
a lower index. Ties are therefore neither all hits nor all misses, and results do not depend
on the chunk size.

Memory: similarities are computed one chunk of queries at a time, so only
[chunk_size, candidates] floats (and as many bools marking the hits) are alive (256 x 25,000
x 4 B = 26 MB for COCO's 5k images x 25k captions), instead of the whole 5k x 25k matrix.
Ranks are counted, not sorted.
"""

import numbers
from typing import Sequence

import numpy as np

from genvis.errors import UserError

DEFAULT_KS = (1, 5, 10)
DEFAULT_CHUNK_SIZE = 256


def _check_embeddings(name: str, x) -> np.ndarray:
  x = np.asarray(x, dtype=np.float32)
  if x.ndim != 2 or x.shape[0] == 0:
    raise UserError(f"retrieval: {name} has shape {list(x.shape)}; expected [count > 0, dim]")
  if not np.all(np.isfinite(x)):
    raise UserError(f"retrieval: {name} (shape {list(x.shape)}) holds NaN/inf values")
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  if np.any(norms == 0):
    raise UserError(f"retrieval: {name} holds {int(np.sum(norms == 0))} all-zero rows, "
                    "which have no direction to compare")
  return x / norms


class _Positives:
  """Which candidates are hits for a chunk of queries, as bool [queries, candidates].

  Held as the distinct (image, text key) pairs, so no [images, keys] table is ever built: a
  chunk's mask costs [chunk, candidates] bools, as its similarities do.
  """

  def __init__(self, owners: np.ndarray, keys: np.ndarray, num_images: int):
    self.owners, self.keys, self.num_images = owners, keys, num_images
    self.num_keys = int(keys.max()) + 1
    pairs = np.unique(owners * self.num_keys + keys)
    self.pair_images, self.pair_keys = pairs // self.num_keys, pairs % self.num_keys

  def images_for_texts(self, start: int, stop: int) -> np.ndarray:
    """[stop - start, Ni]: the images owning a caption with text query q's key."""
    query_keys, local = np.unique(self.keys[start:stop], return_inverse=True)
    wanted = np.isin(self.pair_keys, query_keys)
    table = np.zeros((len(query_keys), self.num_images), bool)
    table[np.searchsorted(query_keys, self.pair_keys[wanted]), self.pair_images[wanted]] = True
    return table[local.reshape(-1)]

  def texts_for_images(self, start: int, stop: int) -> np.ndarray:
    """[stop - start, Nt]: the texts whose key is one of image query q's caption keys."""
    wanted = (self.pair_images >= start) & (self.pair_images < stop)
    table = np.zeros((stop - start, self.num_keys), bool)
    table[self.pair_images[wanted] - start, self.pair_keys[wanted]] = True
    return table[:, self.keys]


def _check_inputs(image_emb, text_emb, text_to_image, text_keys):
  images = _check_embeddings("image_emb", image_emb)
  texts = _check_embeddings("text_emb", text_emb)
  if images.shape[1] != texts.shape[1]:
    raise UserError(f"retrieval: image_emb has shape {list(images.shape)} but text_emb "
                    f"{list(texts.shape)}; expected the same embedding dim")
  owners = np.asarray(text_to_image)
  if owners.shape != (len(texts),) or not np.issubdtype(owners.dtype, np.integer):
    raise UserError(f"retrieval: text_to_image has shape {list(owners.shape)} and dtype "
                    f"{owners.dtype}; expected integer image ids [{len(texts)}] (one per text)")
  if owners.min() < 0 or owners.max() >= len(images):
    raise UserError(f"retrieval: text_to_image spans {owners.min()}..{owners.max()}; expected "
                    f"image ids in 0..{len(images) - 1}")
  if text_keys is None:
    keys = np.arange(len(texts))
  else:
    keys = np.asarray(text_keys)
    if keys.shape != (len(texts),) or not np.issubdtype(keys.dtype, np.integer):
      raise UserError(f"retrieval: text_keys has shape {list(keys.shape)} and dtype "
                      f"{keys.dtype}; expected integer keys [{len(texts)}] (one per text)")
    _, keys = np.unique(keys, return_inverse=True)  # 0..K-1, so keys index tables
  return images, texts, _Positives(owners.astype(np.int64), keys.reshape(-1).astype(np.int64),
                                   len(images))


def _check_chunk_size(chunk_size) -> int:
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) \
      or chunk_size < 1:
    raise UserError(f"retrieval: chunk_size={chunk_size!r}; expected a positive int")
  return int(chunk_size)


def _rank_of(similarity: np.ndarray, target: np.ndarray) -> np.ndarray:
  """0-based rank of candidate target[q] in row q of similarity, with the tie rule above."""
  rows = np.arange(len(target))
  score = similarity[rows, target][:, None]
  higher = np.sum(similarity > score, axis=1)
  earlier_tie = np.sum((similarity == score)
                       & (np.arange(similarity.shape[1])[None, :] < target[:, None]), axis=1)
  return higher + earlier_tie


def _best_hit_rank(similarity: np.ndarray, hits: np.ndarray) -> np.ndarray:
  """Per query row, the rank of its best-ranked hit (rows need at least one hit)."""
  # Rank is monotone in (similarity desc, index asc), so the best hit is the most similar
  # one, the lowest index among equals: argmax returns exactly that one.
  best = np.argmax(np.where(hits, similarity, -np.inf), axis=1)
  return _rank_of(similarity, best)


def text_to_image_ranks(image_emb, text_emb, text_to_image,
                        chunk_size: int = DEFAULT_CHUNK_SIZE, text_keys=None) -> np.ndarray:
  """For each text, the 0-based rank of its own image among all images: int64 [Nt].

  With `text_keys`: of the best-ranked image owning a caption with the text's key.
  """
  images, texts, positives = _check_inputs(image_emb, text_emb, text_to_image, text_keys)
  chunk_size = _check_chunk_size(chunk_size)
  ranks = np.empty(len(texts), np.int64)
  for start in range(0, len(texts), chunk_size):
    stop = min(start + chunk_size, len(texts))
    similarity = texts[start:stop] @ images.T
    if text_keys is None:  # the one hit is the owner: no mask to build
      ranks[start:stop] = _rank_of(similarity, positives.owners[start:stop])
    else:
      ranks[start:stop] = _best_hit_rank(similarity, positives.images_for_texts(start, stop))
  return ranks


def image_to_text_ranks(image_emb, text_emb, text_to_image,
                        chunk_size: int = DEFAULT_CHUNK_SIZE, text_keys=None) -> np.ndarray:
  """For each image, the 0-based rank of its best-ranked caption among all texts: int64 [Ni].

  With `text_keys`: of the best-ranked text with the key of one of the image's captions.
  An image without captions gets rank -1 (it is not a query).
  """
  images, texts, positives = _check_inputs(image_emb, text_emb, text_to_image, text_keys)
  chunk_size = _check_chunk_size(chunk_size)
  ranks = np.full(len(images), -1, np.int64)
  has_caption = np.bincount(positives.owners, minlength=len(images)) > 0
  for start in range(0, len(images), chunk_size):
    stop = min(start + chunk_size, len(images))
    keep = has_caption[start:stop]
    if not keep.any():
      continue
    hits = positives.texts_for_images(start, stop)[keep]
    ranks[start:stop][keep] = _best_hit_rank(images[start:stop][keep] @ texts.T, hits)
  return ranks


def _check_ks(ks) -> list[int]:
  ks = [ks] if isinstance(ks, numbers.Integral) else list(ks)
  if not ks or any(isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1
                   for k in ks):
    raise UserError(f"retrieval: ks={ks}; expected positive ints (the k of recall@k)")
  return [int(k) for k in ks]


def recall_at_k(image_emb, text_emb, text_to_image, ks: Sequence[int] = DEFAULT_KS,
                chunk_size: int = DEFAULT_CHUNK_SIZE, text_keys=None) -> dict:
  """Recall@k for image → text and text → image retrieval.

  Args:
    image_emb: [Ni, D] image embeddings (normalised here).
    text_emb: [Nt, D] caption embeddings (normalised here).
    text_to_image: int [Nt], the image each caption describes; an image may have several.
    ks: the k values.
    chunk_size: queries per similarity block (memory: chunk_size x candidates floats).
    text_keys: optional int [Nt], equal for captions with identical text; then a retrieved
      caption (image) is a hit when its text (one of its captions' texts) is the query's
      (see the module doc). None: each caption only matches its own image.

  Returns:
    {"image_to_text/R@k": float, "text_to_image/R@k": float for each k,
     "image_to_text/queries": int, "text_to_image/queries": int}: fractions of hits in
    [0, 1], and how many queries each direction had.

  Raises:
    UserError: shapes, ids or ks that do not fit, naming the argument.
  """
  ks = _check_ks(ks)
  t2i = text_to_image_ranks(image_emb, text_emb, text_to_image, chunk_size, text_keys)
  i2t = image_to_text_ranks(image_emb, text_emb, text_to_image, chunk_size, text_keys)
  i2t = i2t[i2t >= 0]
  metrics = {}
  for k in ks:
    metrics[f"image_to_text/R@{k}"] = float(np.mean(i2t < k))
  for k in ks:
    metrics[f"text_to_image/R@{k}"] = float(np.mean(t2i < k))
  metrics["image_to_text/queries"] = int(len(i2t))
  metrics["text_to_image/queries"] = int(len(t2i))
  return metrics
