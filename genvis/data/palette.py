"""Colour palettes: pixels as tokens, for models that predict pixels one token at a time.

ImageGPT (and later DALL-E-style and discrete image models) turns each pixel into one token
by clustering colours: k-means on pixels scaled to [-1, 1] gives a palette of `num_colors`
centroids (ImageGPT: 512, i.e. 9 bits), a pixel's token is its nearest centroid, and a token
decodes back to its centroid. The palette is part of the model, so it is saved next to the
checkpoint and loaded with it: a different palette would give every token another meaning.

Grey-level data (the embedded digits) need no clustering: `grey_levels_palette(17)` holds the
native levels exactly, so quantising and dequantising a digit is lossless.

Palettes are float32 numpy arrays `[num_colors, C]`, sorted lexicographically by channel so
that token order is stable and, for grey data, token id grows with brightness. k-means runs
in JAX (jit-compiled Lloyd iterations, distances computed chunk by chunk so memory stays
bounded by the chunk size, not the number of pixels); it is deterministic for a seed.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from genvis.atomic_files import replacing
from genvis.errors import UserError, one_line

# Pixels per distance computation: memory is about CHUNK * num_colors * C floats
# (4096 * 512 * 3 * 4 bytes = 25 MB for ImageGPT's palette on RGB pixels).
CHUNK = 4096
PALETTE_SUFFIXES = (".npy", ".json")


def _check_palette(palette, name: str = "palette") -> np.ndarray:
  palette = np.asarray(palette)
  if palette.ndim != 2 or palette.shape[0] < 1 or palette.shape[1] < 1:
    raise UserError(f"{name} has shape {palette.shape}; expected [num_colors, channels]")
  if not np.issubdtype(palette.dtype, np.floating) or not np.all(np.isfinite(palette)):
    raise UserError(f"{name} must hold finite floats (got dtype {palette.dtype})")
  return palette.astype(np.float32)


def _sorted_rows(palette: np.ndarray) -> np.ndarray:
  """Rows sorted by channel 0, then channel 1, ...: a stable token order."""
  return palette[np.lexsort(palette.T[::-1])]


def _pad_to_chunks(points: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
  """`points` padded to a multiple of `chunk` rows, and a 0/1 weight marking real rows."""
  padding = -len(points) % chunk
  weights = np.concatenate([np.ones(len(points), np.float32), np.zeros(padding, np.float32)])
  padded = np.concatenate([points, np.zeros((padding, points.shape[1]), points.dtype)])
  return padded, weights


# ---------------------------------------------------------------------------------------------
# k-means in JAX.


def _squared_distances(points, centres):
  """[P, K] squared distances, from differences (exactly 0 for a point equal to a centre)."""
  return jnp.sum(jnp.square(points[:, None, :] - centres[None, :, :]), axis=-1)


def _kmeans_plus_plus(points, weights, num_colors: int, key):
  """k-means++ seeding: each next centre drawn with probability proportional to its squared
  distance to the nearest centre so far (padding rows have weight 0 and are never drawn)."""

  def draw(key, nearest):
    scores = nearest * weights
    # All real points already coincide with centres (fewer distinct colours than
    # num_colors): draw uniformly among real points instead.
    scores = jnp.where(jnp.sum(scores) > 0, scores, weights)
    return jax.random.categorical(key, jnp.log(scores))

  first = points[draw(jax.random.fold_in(key, 0), jnp.ones_like(weights))]
  centres = jnp.zeros((num_colors, points.shape[1]), points.dtype).at[0].set(first)
  nearest = jnp.sum(jnp.square(points - first), axis=-1)

  def add_centre(i, carry):
    centres, nearest = carry
    centre = points[draw(jax.random.fold_in(key, i), nearest)]
    nearest = jnp.minimum(nearest, jnp.sum(jnp.square(points - centre), axis=-1))
    return centres.at[i].set(centre), nearest

  centres, _ = jax.lax.fori_loop(1, num_colors, add_centre, (centres, nearest))
  return centres


def _assign(points, weights, centres, chunk: int):
  """Nearest centre per point, its squared distance, and the per-centre sums and counts,
  computed `chunk` points at a time."""
  num_colors, channels = centres.shape

  def one_chunk(totals, chunk_data):
    sums, counts = totals
    chunk_points, chunk_weights = chunk_data
    distances = _squared_distances(chunk_points, centres)
    nearest = jnp.argmin(distances, axis=-1)
    # One-hot matmul rather than a scatter-add: same result on every backend and run.
    one_hot = jax.nn.one_hot(nearest, num_colors, dtype=points.dtype) * chunk_weights[:, None]
    sums = sums + jnp.matmul(one_hot.T, chunk_points, precision=jax.lax.Precision.HIGHEST)
    return (sums, counts + jnp.sum(one_hot, axis=0)), (nearest, jnp.min(distances, axis=-1))

  totals = (jnp.zeros((num_colors, channels), points.dtype), jnp.zeros(num_colors, points.dtype))
  chunked = (points.reshape(-1, chunk, channels), weights.reshape(-1, chunk))
  (sums, counts), (nearest, distances) = jax.lax.scan(one_chunk, totals, chunked)
  return nearest.reshape(-1), distances.reshape(-1), sums, counts


def _lloyd_step(points, weights, centres, chunk: int):
  """One Lloyd update. A centre that attracted no point is re-seeded at one of the points
  farthest from their own centre (the j-th empty centre takes the j-th farthest point), which
  is where the clustering error is largest."""
  num_colors = centres.shape[0]
  _, distances, sums, counts = _assign(points, weights, centres, chunk)
  means = sums / jnp.maximum(counts, 1.0)[:, None]
  empty = counts == 0
  _, farthest = jax.lax.top_k(jnp.where(weights > 0, distances, -1.0), num_colors)
  rank = jnp.clip(jnp.cumsum(empty) - 1, 0, num_colors - 1)
  return jnp.where(empty[:, None], points[farthest[rank]], means)


@functools.partial(jax.jit, static_argnames=("num_colors", "iters", "chunk"))
def _kmeans(points, weights, key, *, num_colors: int, iters: int, chunk: int):
  centres = _kmeans_plus_plus(points, weights, num_colors, key)
  step = lambda _, centres: _lloyd_step(points, weights, centres, chunk)
  return jax.lax.fori_loop(0, iters, step, centres)


def fit_palette(pixels, num_colors: int, seed: int = 0, iters: int = 20) -> np.ndarray:
  """A palette of `num_colors` colours by k-means (k-means++ seeding, `iters` Lloyd steps).

  Args:
    pixels: [N, C] pixel values in [-1, 1] (e.g. `images.reshape(-1, C)`, or a random subset
      of it: the cost is O(N * num_colors * C) per iteration).
    num_colors: palette size (ImageGPT: 512); at most N.
    seed: the PRNG seed; the same pixels and seed give the same palette.
    iters: Lloyd iterations after seeding (0 keeps the k-means++ centres).

  Returns:
    float32 [num_colors, C], rows sorted lexicographically.

  Raises:
    UserError: one line naming the argument that is not valid.
  """
  pixels = np.asarray(pixels)
  if pixels.ndim != 2 or pixels.shape[0] < 1 or pixels.shape[1] < 1:
    raise UserError(f"fit_palette pixels has shape {pixels.shape}; expected [N, channels]")
  if not np.issubdtype(pixels.dtype, np.number) or not np.all(np.isfinite(pixels)):
    raise UserError(f"fit_palette pixels must be finite numbers (got dtype {pixels.dtype})")
  if isinstance(num_colors, bool) or not isinstance(num_colors, (int, np.integer)) \
      or not 1 <= num_colors <= len(pixels):
    raise UserError(f"fit_palette num_colors={num_colors!r}: expected an int in "
                    f"[1, {len(pixels)}] (the number of pixels)")
  if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 0:
    raise UserError(f"fit_palette iters={iters!r}: expected an int >= 0")
  chunk = min(CHUNK, len(pixels))
  points, weights = _pad_to_chunks(pixels.astype(np.float32), chunk)
  centres = _kmeans(points, weights, jax.random.key(seed), num_colors=int(num_colors),
                    iters=int(iters), chunk=chunk)
  return _sorted_rows(np.asarray(centres, dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# Pixels <-> tokens.


@jax.jit
def _nearest_colours(points, palette):
  return jnp.argmin(_squared_distances(points, palette), axis=-1).astype(jnp.int32)


def quantize(images, palette, chunk: int = CHUNK) -> np.ndarray:
  """Tokens: the index of each pixel's nearest palette colour (squared Euclidean distance).

  Args:
    images: [..., C] pixels in [-1, 1], e.g. [N, H, W, C].
    palette: [num_colors, C].
    chunk: pixels per device call; memory is about chunk * num_colors * C floats, and every
      call has the same shape, so one compilation serves any number of images.

  Returns:
    int32 numpy array of shape images.shape[:-1], e.g. [N, H, W].
  """
  palette = _check_palette(palette)
  images = np.asarray(images, dtype=np.float32)
  if images.ndim < 1 or images.shape[-1] != palette.shape[1]:
    raise UserError(f"quantize images has shape {images.shape}; expected [..., "
                    f"{palette.shape[1]}] to match the palette's {palette.shape[1]} channels")
  pixels = images.reshape(-1, palette.shape[1])
  chunk = max(1, min(chunk, len(pixels)))
  padded, _ = _pad_to_chunks(pixels, chunk)
  tokens = [np.asarray(_nearest_colours(padded[start:start + chunk], palette))
            for start in range(0, len(padded), chunk)]
  tokens = np.concatenate(tokens) if tokens else np.zeros(0, np.int32)
  return tokens[:len(pixels)].reshape(images.shape[:-1])


def dequantize(tokens, palette):
  """Pixels: each token's palette colour, shape tokens.shape + (C,).

  Works on numpy tokens and inside jit (sampling hooks), returning a float32 jax.Array.
  """
  return jnp.take(jnp.asarray(palette, dtype=jnp.float32), tokens, axis=0)


def grey_levels_palette(levels: int = 17) -> np.ndarray:
  """`levels` evenly spaced grey values from -1 to 1, as a [levels, 1] palette.

  With 17 levels these are g / 8 - 1 for g in 0..16, exactly the values of
  genvis/data/digits.py, so digits quantise losslessly.
  """
  if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
    raise UserError(f"grey_levels_palette levels={levels!r}: expected an int >= 2")
  return np.linspace(-1.0, 1.0, levels, dtype=np.float64).astype(np.float32)[:, None]


# ---------------------------------------------------------------------------------------------
# Files: saved with the checkpoint, read back before any token is decoded.


def _suffix(path: str) -> str:
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in PALETTE_SUFFIXES:
    raise UserError(f"palette file {path!r}: expected a name ending in "
                    f"{' or '.join(PALETTE_SUFFIXES)}")
  return suffix


def save_palette(path: str, palette) -> None:
  """Writes `palette` to `path` (.npy, or .json as {"palette": [[...], ...]}) atomically."""
  path = os.fspath(path)
  palette = _check_palette(palette)
  suffix = _suffix(path)
  with replacing(path) as temporary:
    if suffix == ".npy":
      with open(temporary, "wb") as f:  # a file object: np.save would append ".npy" to a name
        np.save(f, palette, allow_pickle=False)
    else:
      with open(temporary, "w", encoding="utf-8") as f:
        json.dump({"palette": palette.tolist()}, f)


def load_palette(path: str) -> np.ndarray:
  """The float32 [num_colors, C] palette in `path` (.npy or .json, as `save_palette` writes).

  Raises:
    UserError: one line naming `path` when it is missing, unreadable or not a palette.
  """
  path = os.fspath(path)
  suffix = _suffix(path)
  if not os.path.isfile(path):
    raise UserError(f"palette file {path!r}: no such file")
  try:
    if suffix == ".npy":
      palette = np.load(path, allow_pickle=False)
    else:
      with open(path, encoding="utf-8") as f:
        palette = np.asarray(json.load(f)["palette"], dtype=np.float32)
  except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
    raise UserError(f"palette file {path!r} is not a readable palette ({one_line(e)})") from None
  return _check_palette(palette, name=f"palette file {path!r}")
