"""MAE pre-training (He et al. 2021): reconstruct the masked patches of an image.

A batch is images [B, H, W, C] in [-1, 1] and per-image weights. The model (`genvis.models.
mae`) hides `mask_ratio` of the patches at random, encodes the rest, decodes every patch and
is scored by the mean squared error over the masked patches only, against the raw pixels or,
with `norm_pix_loss`, each patch normalised by its own mean and standard deviation.

Masking randomness: in training the one per-step rng is split into the "dropout" and
"masking" streams. In evaluation the masks come from fixed noise per held-out batch index
(carried in the batch as "noise"), so every evaluation of a run, and of runs with other
seeds, scores the same patches and validation losses compare step to step.

A masked MSE means little alone, so evaluation also scores two baselines on the same masks:
`mean_patch_mse` predicts for every masked patch the mean training patch (one vector over
all images and patch positions, in the loss's target space: with norm_pix_loss that is the
mean normalised patch, ~0), and `mean_image_mse` predicts the mean training patch at that
patch's position (the mean image, cut into patches). A model that beats the second uses the
visible patches, not just where the masked patch sits.

The `sample` hook shows reconstructions as MAE's paper does: per test image, the original,
the masked input (hidden patches grey), the decoder's output for every patch (de-normalised
with each target patch's own mean and std under norm_pix_loss, as the paper's figures are),
and that output with the visible patches pasted back. `features` gives the encoder's
representation of whole, unmasked images, pooled as `config.model.pooling` says (the class
token, or the mean of the patch tokens), for linear probes (`genvis.eval.probe`).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from genvis.data.image_batches import ImageBatches
from genvis.models import mae, vit
from genvis.nn.patches import patchify, unpatchify
from genvis.nn.transformer import stack_flops
from genvis.sampling import image_grid
from genvis.train.distributed import gather_to_host, map_in_chunks
from genvis.tasks.base import Task

# Evaluation masks do not depend on config.seed: runs with different seeds score the same
# patches of the same images.
EVAL_NOISE_SEED = 20211111
MEAN_PATCH_CHUNK = 1024  # training images per chunk when averaging patches (bounded memory)


class MAETask(Task):
  """Masked-patch reconstruction on `config.data`'s images."""

  def __init__(self, config, workdir, *, process_index=0, process_count=1):
    super().__init__(config, workdir, process_index=process_index, process_count=process_count)
    self.batches = ImageBatches(config.data, config.seed, process_index=process_index,
                                process_count=process_count)
    self.train_set, self.test_set = self.batches.train_set, self.batches.test_set
    self.image_shape = self.batches.image_shape
    self.model_config = resolve_model_config(config, self.image_shape)
    self.model = mae.MAE(self.model_config)
    # The baselines, in the loss's target space, from the (un-augmented) training images.
    self.mean_image_patches = mean_training_patches(self.train_set.images, self.model_config)
    self.mean_patch = self.mean_image_patches.mean(axis=0)

  @property
  def num_patches(self) -> int:
    return self.model_config.num_patches

  # ----------------------------------------------------------------------------- batches
  def batch_spec(self):
    batch = self.config.data.batch_size
    return {"images": jax.ShapeDtypeStruct((batch, *self.image_shape), jnp.float32),
            "weights": jax.ShapeDtypeStruct((batch,), jnp.float32)}

  def init_variables(self, rng):
    images = jnp.zeros((1, *self.image_shape), jnp.float32)
    return self.model.init(rng, images, noise=jnp.zeros((1, self.num_patches), jnp.float32))

  def train_batch(self, step):
    return self.batches.train_batch(step)

  def eval_noise(self, index: int) -> np.ndarray:
    """Masking noise [global batch, N] of held-out batch `index`: the same in every eval."""
    rng = np.random.default_rng([EVAL_NOISE_SEED, index])
    return rng.random((self.config.data.batch_size, self.num_patches), dtype=np.float32)

  def eval_batches(self):
    """The whole test split (`eval.num_batches` < 0), or its first `num_batches` batches,
    each with its fixed masking noise."""
    for index, batch in self.batches.eval_batches(self.config.eval.num_batches):
      yield {**batch, "noise": self.eval_noise(index)[self.batches.rows]}

  # ----------------------------------------------------------------------------- loss
  def loss_fn(self, params, batch, rng, *, train):
    """Masked MSE over the real images' masked patches; in eval also the baselines' MSE on
    the same masks and the batch's `weight`. A batch's "noise" [B, N] fixes the masks."""
    dropout_rng, masking_rng = jax.random.split(rng)
    images = batch["images"]
    out = self.model.apply({"params": params}, images, noise=batch.get("noise"), train=train,
                           rngs={"dropout": dropout_rng, "masking": masking_rng})
    target = mae.patch_targets(images, self.model_config)
    weights = batch["weights"]
    # Each image masks the same number of patches, so weighting patches by their image's
    # weight gives the mean over the real images' masked patches (padding rows cost 0).
    patch_weights = out["mask"] * weights[:, None]
    masked_total = jnp.maximum(jnp.sum(patch_weights), 1.0)

    def masked_mse(pred):
      per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
      return jnp.sum(per_patch * patch_weights) / masked_total

    loss = masked_mse(out["pred"])
    metrics = {"loss": loss}
    if not train:
      metrics["mean_patch_mse"] = masked_mse(jnp.asarray(self.mean_patch)[None, None])
      metrics["mean_image_mse"] = masked_mse(jnp.asarray(self.mean_image_patches)[None])
      metrics["weight"] = jnp.sum(weights)  # held-out batches may end in padding rows
    return loss, metrics

  def flops_per_step(self, num_params):
    return flops_per_image(self.model_config) * self.tokens_per_step()

  def tokens_per_step(self):
    return self.config.data.batch_size  # images

  def model_field_defaults(self):
    return mae.default_fields()

  def metadata(self):
    return {"task": "mae", "model": dataclasses.asdict(self.model_config),
            "image_shape": list(self.image_shape)}

  # ----------------------------------------------------------------------------- samples
  def sample(self, params, rng):
    """A "reconstructions" grid: `sample.num_samples` test images, one per row."""
    count = min(self.config.sample.num_samples, len(self.test_set))
    if count <= 0:
      return {}
    table = self.reconstruction_table(params, self.test_set.images[:count], rng)
    scale = image_grid.default_scale(self.image_shape[0])
    return {"images": {"reconstructions": image_grid.tile(table, scale=scale)}}

  def reconstruction_table(self, params, originals: np.ndarray, rng) -> np.ndarray:
    """[N, 4, H, W, C]: original | masked (hidden patches 0.0, grey) | the decoder's output
    for every patch | that output with the visible patches pasted back. The masks come from
    uniform noise drawn with `rng`, so a key gives the same table every time."""
    cfg = self.model_config
    noise = jax.random.uniform(rng, (len(originals), self.num_patches))
    out = _forward(self.model)(params, jnp.asarray(originals), noise)
    pred, mask = (gather_to_host(out[k]) for k in ("pred", "mask"))
    patches = np.asarray(patchify(jnp.asarray(originals, jnp.float32), cfg.patch_size))
    if cfg.norm_pix_loss:  # back to pixels with each target patch's own statistics
      mean = patches.mean(axis=-1, keepdims=True)
      var = patches.var(axis=-1, keepdims=True, ddof=1)
      pred = pred * np.sqrt(var + mae.NORM_PIX_EPS) + mean
    hidden = mask[..., None] > 0
    height, width = self.image_shape[:2]

    def image(p):
      return np.asarray(unpatchify(jnp.asarray(p), cfg.patch_size, height, width))

    columns = [originals, image(np.where(hidden, 0.0, patches)), image(pred),
               image(np.where(hidden, pred, patches))]
    return np.stack([np.asarray(c, np.float32) for c in columns], axis=1)

  # ----------------------------------------------------------------------------- probes
  def features(self, params, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """[N, D]: the encoder's representation of whole, unmasked images, pooled per
    `config.model.pooling` (the model's own pooling, as a fine-tuned ViT pools), for linear
    probes."""
    pooled = _pooled_features(self.model)
    return map_in_chunks(lambda chunk: pooled(params, chunk), images, batch_size)


@functools.lru_cache(maxsize=4)
def _forward(model: mae.MAE):
  """A compiled (params, images, noise) -> the model's output dict, masks from `noise`."""
  return jax.jit(lambda params, images, noise: model.apply(
      {"params": params}, images, noise=noise, train=False))


@functools.lru_cache(maxsize=4)
def _pooled_features(model: mae.MAE):
  """A compiled (params, images) -> [B, D] pooled encoder features (MAE.features)."""
  return jax.jit(lambda params, images: mae.mae_encoder_features(model, params, images))


def mean_training_patches(images: np.ndarray, config: mae.MAEConfig) -> np.ndarray:
  """[N, p*p*C]: the mean over `images` of each patch position's target (normalised per
  patch under norm_pix_loss, exactly as the loss sees it), averaged in chunks."""
  total = np.zeros((config.num_patches, config.patch_dim), np.float64)
  for start in range(0, len(images), MEAN_PATCH_CHUNK):
    chunk = jnp.asarray(images[start:start + MEAN_PATCH_CHUNK])
    total += np.asarray(mae.patch_targets(chunk, config), np.float64).sum(axis=0)
  return (total / len(images)).astype(np.float32)


def resolve_model_config(config, image_shape) -> mae.MAEConfig:
  """`config.model` with image_size and channels filled in from the data when 0 (also in
  `config`, so workdir/config.json records them); any other value must match the data."""
  vit.fill_from_data(config.model, image_shape)
  return mae.MAEConfig(**config.model.to_dict())


def flops_per_image(config: mae.MAEConfig) -> float:
  """Training FLOPs per image (3 x forward): the patch embedding on all N patches, the
  encoder on the kept tokens (all N with the encoder's mask tokens), the decoder's input
  projection on those, its blocks on all N (+ class) tokens, and the pixel head on N."""
  prefix = int(config.class_token)
  encoder_tokens = prefix + (config.num_patches if config.encoder_mask_tokens
                             else config.num_kept)
  decoder_tokens = prefix + config.num_patches
  projections = (config.patch_dim * config.d_model * config.num_patches
                 + config.d_model * config.decoder_d_model * encoder_tokens
                 + config.decoder_d_model * config.patch_dim * config.num_patches)
  forward = (2 * projections + stack_flops(config, encoder_tokens)
             + stack_flops(config.decoder_config(), decoder_tokens))
  return 3.0 * forward
