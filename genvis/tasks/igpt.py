"""ImageGPT (Chen et al. 2020): generative pre-training on pixels.

An image becomes a sequence of pixel tokens in raster order (row by row, left to right): each
pixel's token is its nearest colour in a palette (`genvis.data.palette`: k-means clusters of
the training pixels, or a grey image's native levels). A learned start-of-image token, the
palette size as id, comes first, so the model predicts every pixel, the first included:

    inputs  = [start, x_0, x_1, ..., x_{n-2}]
    targets = [x_0,   x_1, x_2, ..., x_{n-1}]

The model is the foundation's GPT with ImageGPT's options (gain-only norm, sigmoid GELU, an
untied zero-initialised head over the palette only; `configs/igpt.py`). The loss is the
next-pixel cross-entropy, reported as `bits_per_pixel` (nats / ln 2 per pixel token) and
`bits_per_dim` (the same divided by the channels: the image's H x W x C dimensions). Over a
grey image with native levels that is the exact bits/dim of the image; over a k-means palette
it is the bits/dim of the palette-quantised image, which is what a token sequence describes.

The palette belongs to the model: it is fitted once, written to `workdir/palette.npy` next to
the checkpoints, reused on resume, and its hash is in the checkpoint metadata.

Samples (`sample` hook): unconditional images and completions of held-out images given their
top half, drawn with the compiled KV-cached loop and returned as picture grids, which the
trainer writes as PNGs. `layer_features` gives every layer's hidden states, normalised per
position and average-pooled as ImageGPT's probes read them, for `genvis.eval.probe`.
"""

import dataclasses
import functools
import hashlib
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genvis.data import image_preprocess, image_sources
from genvis.data import palette as palette_lib
from genvis.data.batching import ExampleOrder, process_rows
from genvis.errors import UserError
from genvis.eval import probe
from genvis.models import gpt
from genvis.sampling import generate, image_grid
from genvis.tasks.base import Task
from genvis.train.distributed import map_in_chunks

log = logging.getLogger(__name__)

PALETTE_FILE = "palette.npy"
PALETTE_KINDS = ("grey", "kmeans")


class ImageGPTTask(Task):
  """Next-pixel prediction on `config.data`'s images, tokenised by a colour palette."""

  def __init__(self, config, workdir, *, process_index=0, process_count=1):
    super().__init__(config, workdir, process_index=process_index, process_count=process_count)
    if config.sample.num_samples > 0:  # fails here, not at the sample after training
      generate.check_filters(config.sample.temperature, config.sample.top_k,
                             config.sample.top_p)
    data = config.data
    self.train_set, self.test_set = image_sources.load_train_test(data)
    self.image_shape = self.train_set.images.shape[1:]
    self.num_pixels = self.image_shape[0] * self.image_shape[1]
    self.palette = load_or_fit_palette(data, self.train_set.images, workdir, seed=config.seed,
                                       process_index=process_index,
                                       process_count=process_count)
    self.num_colors = len(self.palette)
    self.start_token = self.num_colors
    self.model_config = resolve_model_config(config, self.num_colors, self.num_pixels)
    self.model = gpt.GPT(self.model_config)
    self.augmented = bool(data.flip or data.random_crop_padding)
    if self.augmented:  # a bad padding fails here, not at the first batch
      image_preprocess.augment(self.train_set.images[:1], (0,), flip=data.flip,
                               random_crop_padding=data.random_crop_padding)
    # Without augmentation the tokens are fixed: quantise once.
    self.train_tokens = None if self.augmented else self.tokens(self.train_set.images)
    self.test_tokens = self.tokens(self.test_set.images)
    self.train_order = ExampleOrder(len(self.train_set), data.batch_size, config.seed,
                                    "the training split")
    self.test_order = ExampleOrder(len(self.test_set), data.batch_size, config.seed,
                                   "the test split")

  # ----------------------------------------------------------------------------- tokens
  def tokens(self, images: np.ndarray) -> np.ndarray:
    """Pixel tokens [N, H*W] int32 in raster order."""
    return palette_lib.quantize(images, self.palette).reshape(len(images), -1).astype(np.int32)

  def images(self, tokens) -> np.ndarray:
    """Images [N, H, W, C] in [-1, 1] from pixel tokens [N, H*W]."""
    pixels = np.asarray(palette_lib.dequantize(np.asarray(tokens), self.palette))
    return pixels.reshape(len(pixels), *self.image_shape[:2], -1)

  def shifted(self, tokens: np.ndarray) -> np.ndarray:
    """Model inputs: the start token, then every pixel token but the last."""
    start = np.full((len(tokens), 1), self.start_token, np.int32)
    return np.concatenate([start, tokens[:, :-1]], axis=1)

  def _batch(self, tokens: np.ndarray, weights: np.ndarray) -> dict:
    return {"inputs": self.shifted(tokens), "targets": tokens,
            "weights": weights.astype(np.float32)}

  # ----------------------------------------------------------------------------- Task API
  def batch_spec(self):
    shape = (self.config.data.batch_size, self.num_pixels)
    return {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
            "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
            "weights": jax.ShapeDtypeStruct(shape[:1], jnp.float32)}

  def init_variables(self, rng):
    return self.model.init(rng, jnp.zeros((1, self.num_pixels), jnp.int32))

  def train_batch(self, step):
    rows = process_rows(self.config.data.batch_size, self.process_index, self.process_count)
    indices = self.train_order.train_indices(step)[rows]
    if self.augmented:
      images = image_preprocess.augment(
          self.train_set.images[indices], (self.config.seed, step), flip=self.config.data.flip,
          random_crop_padding=self.config.data.random_crop_padding,
          row_ids=np.arange(rows.start, rows.stop))
      tokens = self.tokens(images)
    else:
      tokens = self.train_tokens[indices]
    return self._batch(tokens, np.ones(len(indices)))

  def eval_batches(self):
    """The whole test split (`eval.num_batches` < 0), or its first `num_batches` batches."""
    limit = self.config.eval.num_batches
    count = self.test_order.num_eval_batches
    rows = process_rows(self.config.data.batch_size, self.process_index, self.process_count)
    for index in range(count if limit < 0 else min(limit, count)):
      indices, weights = self.test_order.eval_indices(index)
      yield self._batch(self.test_tokens[indices[rows]], weights[rows])

  def loss_fn(self, params, batch, rng, *, train):
    logits = self.model.apply({"params": params}, batch["inputs"], train=train,
                              rngs={"dropout": rng})
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    weights = batch["weights"]
    total = jnp.sum(weights)
    loss = jnp.sum(per_pixel.mean(axis=-1) * weights) / jnp.maximum(total, 1.0)
    bits = loss / math.log(2)
    metrics = {"loss": loss, "bits_per_pixel": bits, "bits_per_dim": bits / self.image_shape[-1]}
    if not train:
      metrics["weight"] = total  # held-out batches may end in padding rows
    return loss, metrics

  def flops_per_step(self, num_params):
    per_token = gpt.flops_per_token(self.model_config, num_params, self.num_pixels)
    return per_token * self.tokens_per_step()

  def tokens_per_step(self):
    return self.config.data.batch_size * self.num_pixels

  def model_field_defaults(self):
    return gpt.default_fields()

  def metadata(self):
    data = self.config.data
    return {"task": "igpt", "model": dataclasses.asdict(self.model_config),
            "image_shape": list(self.image_shape),
            "palette": {"kind": data.palette, "colors": self.num_colors,
                        "fit_pixels": data.palette_fit_pixels, "iters": data.palette_iters,
                        "sha256": palette_digest(self.palette)}}

  # ----------------------------------------------------------------------------- samples
  def sample(self, params, rng):
    """Picture grids: `sample.num_samples` unconditional images, and as many test images
    completed `sample.completions` times each from their top half."""
    cfg = self.config.sample
    if cfg.num_samples == 0:
      return {}
    unconditional_rng, completion_rng = jax.random.split(rng)
    samples = self.complete(params, np.zeros((cfg.num_samples, 0), np.int32),
                            unconditional_rng)
    columns = max(1, round(math.sqrt(cfg.num_samples)))
    rows = -(-cfg.num_samples // columns)
    padded = np.concatenate([samples, np.zeros((rows * columns - len(samples),
                                                *samples.shape[1:]), np.float32)])
    scale = image_grid.default_scale(self.image_shape[0])
    pictures = {"samples": image_grid.tile(padded.reshape(rows, columns, *samples.shape[1:]),
                                           scale=scale)}
    if cfg.completions > 0:
      count = min(cfg.num_samples, len(self.test_set))
      table = self.completion_table(params, self.test_set.images[:count], cfg.completions,
                                    completion_rng)
      pictures["completions"] = image_grid.tile(table, scale=scale)
    return {"images": pictures}

  def complete(self, params, given_tokens: np.ndarray, rng) -> np.ndarray:
    """Images [B, H, W, C] that start with `given_tokens` [B, k] (k may be 0: unconditional)
    and continue with sampled pixels."""
    cfg = self.config.sample
    prompt = np.concatenate([np.full((len(given_tokens), 1), self.start_token, np.int32),
                             given_tokens], axis=1)
    new = self.num_pixels - given_tokens.shape[1]
    generate.check_length(prompt.shape[1], new, self.model_config.max_len)
    tokens = generate.generate(self.model, params, jnp.asarray(prompt), rng,
                               max_new_tokens=new, temperature=cfg.temperature,
                               top_k=cfg.top_k, top_p=cfg.top_p)
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    tokens = multihost_utils.process_allgather(tokens, tiled=True)
    return self.images(np.asarray(tokens)[:, 1:])

  def completion_table(self, params, originals: np.ndarray, completions: int, rng):
    """[N, 2 + completions, H, W, C]: each original, its top half (the rest grey), and
    `completions` samples of the bottom half given the top."""
    height, width = self.image_shape[:2]
    given = (height // 2) * width
    tokens = self.tokens(originals)
    prompts = np.repeat(tokens[:, :given], completions, axis=0)
    completed = self.complete(params, prompts, rng).reshape(
        len(originals), completions, *self.image_shape)
    top_half = self.images(tokens).copy()  # the quantised original, as the model sees it
    top_half[:, height // 2:] = 0.0
    return np.concatenate([originals[:, None], top_half[:, None], completed], axis=1)

  # ----------------------------------------------------------------------------- probes
  def layer_features(self, params, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """[num_layers, N, D]: each block's output, normalised at each position (ImageGPT's
    n^l = norm(h^l), here without the next block's learned gain) and averaged over the
    positions, start token included: the features ImageGPT's linear probes read."""
    inputs = self.shifted(self.tokens(images))
    pooled = _pooled_layers(self.model)
    return map_in_chunks(lambda chunk: pooled(params, chunk), inputs, batch_size, out_axis=1)


@functools.lru_cache(maxsize=4)
def _pooled_layers(model: gpt.GPT):
  """A compiled (params, tokens) -> [layers, B, D] of normalised, average-pooled states."""
  epsilon = model.config.layer_norm_epsilon

  def pooled(params, tokens):
    hidden = gpt.layer_outputs(model, params, tokens)
    if model.config.norm == "layer":
      hidden = hidden - hidden.mean(axis=-1, keepdims=True)
    hidden = hidden * jax.lax.rsqrt(jnp.mean(hidden ** 2, axis=-1, keepdims=True) + epsilon)
    return probe.average_pool(hidden)

  return jax.jit(pooled)


def palette_digest(palette: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(palette, np.float32).tobytes()).hexdigest()[:16]


def load_or_fit_palette(data, train_images: np.ndarray, workdir: str | None, *, seed: int,
                        process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """The run's palette: `workdir/palette.npy` if the run has one, else a new one from config:
  `data.palette` "grey" (`palette_size` evenly spaced grey levels; 17 are the digits' native
  levels) or "kmeans" (`palette_size` clusters of up to `palette_fit_pixels` training pixels
  drawn with `seed`). With a workdir, process 0 fits and writes it and the others read that
  file, so every process gives tokens the same meaning."""
  kind, size, channels = data.palette, data.palette_size, train_images.shape[-1]
  if kind not in PALETTE_KINDS:
    raise UserError(f"config.data.palette={kind!r}: expected one of {', '.join(PALETTE_KINDS)}")
  if size < 2:
    raise UserError(f"config.data.palette_size={size}: expected at least 2 colours")
  if data.palette_iters < 0:
    raise UserError(f"config.data.palette_iters={data.palette_iters}: expected >= 0")
  if kind == "grey" and channels != 1:
    raise UserError(f"config.data.palette='grey' needs grey images; config.data gives "
                    f"{channels} channels (set config.data.channels=1 or palette='kmeans')")
  path = os.path.join(workdir, PALETTE_FILE) if workdir else None
  if path and not os.path.exists(path) and process_index == 0:
    palette_lib.save_palette(path, _new_palette(data, train_images, seed))
  if path and process_count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("igpt palette written")
  if not path:
    return _new_palette(data, train_images, seed)
  palette = palette_lib.load_palette(path)
  if palette.shape != (size, channels):
    raise UserError(f"{path} holds a palette of shape {list(palette.shape)}, but "
                    f"config.data.palette_size={size} with {channels}-channel images needs "
                    f"[{size}, {channels}]")
  return palette


def _new_palette(data, train_images: np.ndarray, seed: int) -> np.ndarray:
  size, channels = data.palette_size, train_images.shape[-1]
  if data.palette == "grey":
    return palette_lib.grey_levels_palette(size)
  pixels = train_images.reshape(-1, channels)
  if data.palette_fit_pixels and len(pixels) > data.palette_fit_pixels:
    pick = np.random.default_rng(seed).choice(len(pixels), data.palette_fit_pixels,
                                              replace=False)
    pixels = pixels[np.sort(pick)]
  if size > len(pixels):  # named here: fit_palette's own message knows no config keys
    raise UserError(f"config.data.palette_size={size}: more colours than the {len(pixels)} "
                    "training pixels the palette is fitted to (config.data."
                    "palette_fit_pixels, or the training images)")
  log.info("fitting a %d-colour palette to %d pixels", size, len(pixels))
  return palette_lib.fit_palette(pixels, size, seed=seed, iters=data.palette_iters)


def resolve_model_config(config, num_colors: int, num_pixels: int) -> gpt.GPTConfig:
  """`config.model` with the sizes the data implies filled in (also in `config`, so
  workdir/config.json records them): vocab_size = colours + the start token, an untied head
  over the colours, and a context of one position per pixel."""
  model = config.model
  if model.vocab_size == 0:
    model.vocab_size = num_colors + 1
  elif model.vocab_size != num_colors + 1:
    raise UserError(f"config.model.vocab_size={model.vocab_size}: a {num_colors}-colour "
                    f"palette needs {num_colors + 1} (colours + the start token), or 0")
  # The head predicts colours only: a start-token logit could be sampled and has no colour.
  if model.tie_embeddings or model.output_vocab_size not in (0, num_colors):
    raise UserError(f"config.model.tie_embeddings={model.tie_embeddings}, output_vocab_size="
                    f"{model.output_vocab_size}: ImageGPT's head predicts the {num_colors} "
                    f"palette colours (tie_embeddings=False, output_vocab_size=0 or "
                    f"{num_colors})")
  model.output_vocab_size = num_colors
  if model.max_len == 0:
    model.max_len = num_pixels
  elif model.max_len < num_pixels:
    raise UserError(f"config.model.max_len={model.max_len} < {num_pixels} pixels per image "
                    "(lower config.data.resolution, or raise max_len)")
  return gpt.GPTConfig(**model.to_dict())
