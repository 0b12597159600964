"""CLIP's softmax and SigLIP's sigmoid contrastive losses over the *global* batch.

A contrastive loss is only as good as its negatives: every image is scored against every text
of the global batch of N pairs, not just the texts on its own device. Two code paths give the
same numbers:

  * global arrays under plain `jax.jit` (the default, `mesh=None`): the embeddings are global
    `jax.Array`s, sharded however the trainer sharded the batch, and XLA inserts the
    collectives. Simple, but XLA may materialise the full N x N similarity matrix.
  * `jax.shard_map` (pass `mesh=`): each device scores its n = N / devices local rows against
    the all-gathered embeddings of the other side, [n, N], so the N x N matrix never sits on
    one device. Gradients flow through `jax.lax.all_gather` (its transpose is a reduce-scatter),
    so every image also receives the gradient of being another device's negative.

Both paths run the same per-row code (`_loss_sums`), once on all rows or once per shard
followed by a `psum`, which is why they agree to float rounding.

Conventions:
  * `image_emb`, `text_emb`: [N, D], L2-normalised by the model; computed in float32.
  * `logit_scale`: the positive multiplier t of the cosine similarities, *not* its log. The
    model keeps a learnable log-scale and passes `clip_logit_scale(log_scale)` for CLIP
    (exp, clipped at 100, as CLIP does) or `jnp.exp(log_scale)` for SigLIP (unclipped, as in
    the SigLIP paper). `initial_values(kind)` gives the paper initialisations.
  * `caption_ids`: optional [N] int; rows with equal ids hold the same caption text, so an
    image is never pushed away from a duplicate of its own caption. CLIP masks those
    off-diagonal logits out of the softmax (both directions); SigLIP labels them positive.
    Without ids only the diagonal pairs are positive.
  * `weights`: optional [N] per-row weights, normally 1 for real rows and 0 for padding rows
    in evaluation. A row's weight scales the loss terms it owns (its image->text and
    text->image cross-entropies for CLIP; its image row of N sigmoid terms for SigLIP), and the
    loss is divided by the sum of the weights. A row of weight 0 is in addition removed as a
    negative from every other row, so zero-weight rows leave the loss exactly equal to the loss
    of the batch without them.

Losses (notation of the papers, s_ij = x_i . y_j, t the scale, b the bias, w the weights):
  CLIP   = (1 / 2 sum_i w_i) sum_i w_i [CE_i(image->text) + CE_i(text->image)]
  SigLIP = -(1 / sum_i w_i) sum_i w_i sum_{j: w_j > 0} log sigmoid(z_ij (t s_ij + b)),
           z_ij = +1 for a matching pair, -1 otherwise.
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from genvis.errors import UserError

KINDS = ("clip", "siglip")

# CLIP: learnable temperature initialised at 1/0.07, its scale clipped at 100.
CLIP_INIT_LOG_SCALE = math.log(1 / 0.07)
CLIP_MAX_SCALE = 100.0
# SigLIP: t = exp(t') with t' = log 10, bias b = -10 (a strong prior towards "no match",
# since N - 1 of the N terms in each row are negatives).
SIGLIP_INIT_LOG_SCALE = math.log(10.0)
SIGLIP_INIT_BIAS = -10.0

# The batch is split over these mesh axes (the "batch" logical axis of genvis/train/mesh.py).
BATCH_AXES = ("data", "fsdp")


def initial_values(kind: str) -> tuple[float, float]:
  """(log_scale, bias) at initialisation for `kind`; CLIP has no bias, so 0."""
  _check_kind(kind)
  if kind == "clip":
    return CLIP_INIT_LOG_SCALE, 0.0
  return SIGLIP_INIT_LOG_SCALE, SIGLIP_INIT_BIAS


def clip_logit_scale(log_scale, max_scale: float = CLIP_MAX_SCALE):
  """min(exp(log_scale), max_scale): CLIP's clamp of the learnable temperature.

  `jnp.minimum` passes no gradient to `log_scale` once exp(log_scale) exceeds the clip: the
  scale then stays at exactly `max_scale`, and nothing brings the parameter back (it is not
  weight-decayed, and Adam's momentum may carry it further up). OpenAI's CLIP clamps the
  parameter itself after each step instead, so a later gradient could lower it again; the
  two differ only after the clip is reached, where CLIP's temperature stays at 100 anyway.
  """
  return jnp.minimum(jnp.exp(log_scale), max_scale)


def logit_scale_for(kind: str, log_scale):
  """The scale t the loss of `kind` takes: clipped for CLIP, plain exp for SigLIP."""
  _check_kind(kind)
  return clip_logit_scale(log_scale) if kind == "clip" else jnp.exp(log_scale)


def contrastive_loss(kind: str, image_emb, text_emb, logit_scale, bias=None, *,
                     caption_ids=None, weights=None, mesh=None,
                     batch_axes: Sequence[str] = BATCH_AXES):
  """The mean contrastive loss of `kind` ("clip" or "siglip") over the global batch.

  Args:
    kind: "clip" (symmetric softmax cross-entropy) or "siglip" (pairwise sigmoid).
    image_emb: [N, D] L2-normalised image embeddings.
    text_emb: [N, D] L2-normalised text embeddings; row i is image i's caption.
    logit_scale: scalar t > 0 (see the module docstring: the scale, not its log).
    bias: scalar SigLIP bias b; required for "siglip", must be None for "clip".
    caption_ids: optional [N] int; equal ids mean identical caption text.
    weights: optional [N] row weights (0 for padding rows).
    mesh: None for the global-array path; a Mesh for the shard_map path.
    batch_axes: mesh axes the batch dimension is split over (shard_map path only).

  Returns:
    A float32 scalar.
  """
  _check_kind(kind)
  if kind == "clip" and bias is not None:
    raise UserError("the CLIP loss takes no bias; pass bias=None (only SigLIP learns one)")
  if kind == "siglip" and bias is None:
    raise UserError("the SigLIP loss needs its learnable bias b (initialised at -10)")
  num_rows = _check_shapes(image_emb, text_emb, caption_ids, weights)
  caption_ids = (jnp.arange(num_rows, dtype=jnp.int32) if caption_ids is None
                 else jnp.asarray(caption_ids))
  weights = (jnp.ones((num_rows,), jnp.float32) if weights is None
             else jnp.asarray(weights, jnp.float32))
  # Global row numbers travel with the rows, so each shard knows which column is its diagonal
  # without relying on the order in which all_gather concatenates shards.
  positions = jnp.arange(num_rows, dtype=jnp.int32)
  scalars = (jnp.asarray(logit_scale, jnp.float32),
             jnp.asarray(0.0 if bias is None else bias, jnp.float32))
  rows = (image_emb, text_emb, caption_ids, weights, positions)

  if mesh is None:
    loss_sum, weight_sum = _loss_sums(kind, rows, rows, *scalars)
    return loss_sum / _safe(weight_sum)
  return _sharded_loss(kind, rows, scalars, mesh, tuple(batch_axes))


def clip_loss(image_emb, text_emb, logit_scale, **kwargs):
  """CLIP's symmetric softmax cross-entropy; keyword arguments as in `contrastive_loss`."""
  return contrastive_loss("clip", image_emb, text_emb, logit_scale, **kwargs)


def siglip_loss(image_emb, text_emb, logit_scale, bias, **kwargs):
  """SigLIP's pairwise sigmoid loss; keyword arguments as in `contrastive_loss`."""
  return contrastive_loss("siglip", image_emb, text_emb, logit_scale, bias, **kwargs)


def _sharded_loss(kind, rows, scalars, mesh, batch_axes):
  """Local rows against all-gathered columns on each device; sums combined with psum."""
  unknown = [axis for axis in batch_axes if axis not in mesh.shape]
  if unknown:
    raise UserError(f"batch axes {unknown} are not axes of the mesh {tuple(mesh.shape)}")
  ways = math.prod(mesh.shape[axis] for axis in batch_axes)
  num_rows = rows[0].shape[0]
  if num_rows % ways:
    raise UserError(f"contrastive batch of {num_rows} rows is not divisible by the {ways} "
                    f"devices of mesh axes {batch_axes} (config.data.batch_size)")

  def per_shard(local_rows, logit_scale, bias):
    # Tiled all_gather: [n, ...] on each device -> [N, ...], differentiable.
    gathered = jax.tree.map(
        lambda x: jax.lax.all_gather(x, batch_axes, axis=0, tiled=True), local_rows)
    loss_sum, weight_sum = _loss_sums(kind, local_rows, gathered, logit_scale, bias)
    loss_sum = jax.lax.psum(loss_sum, batch_axes)
    weight_sum = jax.lax.psum(weight_sum, batch_axes)
    return loss_sum / _safe(weight_sum)

  row_spec = PartitionSpec(batch_axes)
  return jax.shard_map(per_shard, mesh=mesh,
                       in_specs=((row_spec,) * len(rows), PartitionSpec(), PartitionSpec()),
                       out_specs=PartitionSpec())(rows, *scalars)


def _loss_sums(kind, local_rows, all_rows, logit_scale, bias):
  """(sum of weighted loss terms of the local rows, sum of their weights).

  `local_rows` and `all_rows` are (image_emb, text_emb, caption_ids, weights, positions);
  the local rows are a subset (one shard) or all of the global rows.
  """
  images, texts, ids, weights, positions = local_rows
  all_images, all_texts, all_ids, all_weights, all_positions = all_rows
  images, texts, all_images, all_texts = (
      x.astype(jnp.float32) for x in (images, texts, all_images, all_texts))
  diagonal = positions[:, None] == all_positions[None, :]  # [n, N]
  same_caption = ids[:, None] == all_ids[None, :]  # symmetric: also text j vs image i
  negative_column = all_weights[None, :] > 0
  image_logits = logit_scale * images @ all_texts.T  # [n, N]: local images vs all texts

  if kind == "clip":
    text_logits = logit_scale * texts @ all_images.T  # [n, N]: local texts vs all images
    # Off the diagonal, drop duplicates of the row's own caption and zero-weight columns;
    # the diagonal always stays, so every softmax has at least its positive.
    keep = diagonal | (~same_caption & negative_column)
    per_row = (_softmax_ce(image_logits, diagonal, keep)
               + _softmax_ce(text_logits, diagonal, keep)) / 2
  else:
    signs = jnp.where(same_caption, 1.0, -1.0)
    terms = -jax.nn.log_sigmoid(signs * (image_logits + bias))
    per_row = jnp.sum(jnp.where(negative_column | diagonal, terms, 0.0), axis=1)
  return jnp.sum(weights * per_row), jnp.sum(weights)


def _softmax_ce(logits, diagonal, keep):
  """Cross-entropy of each row against its diagonal column, over the kept columns."""
  positive = jnp.sum(jnp.where(diagonal, logits, 0.0), axis=1)
  return jax.nn.logsumexp(jnp.where(keep, logits, -jnp.inf), axis=1) - positive


def _safe(weight_sum):
  """An all-padding batch has loss 0 rather than 0/0."""
  return jnp.maximum(weight_sum, jnp.finfo(jnp.float32).tiny)


def _check_kind(kind):
  if kind not in KINDS:
    raise UserError(f"contrastive loss {kind!r} is not one of {KINDS}")


def _check_shapes(image_emb, text_emb, caption_ids, weights) -> int:
  """Shapes are static, so mistakes are caught here, before anything compiles."""
  if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
    raise UserError(f"image_emb {tuple(image_emb.shape)} and text_emb "
                    f"{tuple(text_emb.shape)} must both be [N, D] with the same N and D")
  num_rows = image_emb.shape[0]
  for name, value in (("caption_ids", caption_ids), ("weights", weights)):
    if value is not None and tuple(jnp.shape(value)) != (num_rows,):
      raise UserError(f"{name} has shape {tuple(jnp.shape(value))}, expected ({num_rows},) "
                      "like the embeddings' batch")
  if caption_ids is not None and not jnp.issubdtype(jnp.asarray(caption_ids).dtype,
                                                    jnp.integer):
    raise UserError(f"caption_ids must be integers, got {jnp.asarray(caption_ids).dtype}")
  return num_rows
