"""CLIP and SigLIP losses: numpy references, duplicates, padding, clipping, and sharded ==
single device for both the global-jit and the shard_map path."""

import functools
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from genvis.errors import UserError
from genvis.nn import contrastive
from genvis.train.mesh import make_mesh

N, D = 16, 8
SCALE, BIAS = 7.0, -3.0  # moderate values, so every term has a non-negligible gradient


def unit_rows(rng, n=N, d=D):
  x = rng.normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def log_softmax(logits):
  shifted = logits - logits.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def clip_reference(x, y, scale, drop=(), weights=None):
  """Symmetric cross-entropy in float64; `drop` lists (image, text) pairs taken out of both
  softmaxes (as -inf logits), `weights` weights rows and drops zero-weight columns."""
  logits = scale * x.astype(np.float64) @ y.astype(np.float64).T
  weights = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
  real_column = np.eye(len(x), dtype=bool) | (weights[None, :] > 0)
  dropped = np.zeros_like(real_column)  # [image, text]
  for i, j in drop:
    dropped[i, j] = True
  image_to_text = -np.diag(log_softmax(np.where(real_column & ~dropped, logits, -np.inf)))
  text_to_image = -np.diag(log_softmax(np.where(real_column & ~dropped.T, logits.T, -np.inf)))
  return np.sum(weights * (image_to_text + text_to_image)) / (2 * weights.sum())


def siglip_reference(x, y, scale, bias, positives=()):
  """-(1/N) sum_ij log sigmoid(z_ij (t x_i.y_j + b)), z = +1 on the diagonal and `positives`."""
  z = 2 * np.eye(len(x)) - 1
  for i, j in positives:
    z[i, j] = 1
  logits = scale * x.astype(np.float64) @ y.astype(np.float64).T + bias
  return np.sum(np.logaddexp(0, -z * logits)) / len(x)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  caption_ids = np.arange(N, dtype=np.int32)
  caption_ids[3] = caption_ids[0]  # rows 0 and 3 hold the same caption ...
  texts = unit_rows(rng)
  texts[3] = texts[0]  # ... so the text encoder gives them the same embedding
  weights = np.ones(N, np.float32)
  weights[[6, 13]] = 0  # two padding rows, on different shards
  return SimpleNamespace(images=unit_rows(rng), texts=texts, caption_ids=caption_ids,
                         weights=weights)


def test_clip_matches_log_softmax_reference():
  rng = np.random.default_rng(1)
  x, y = unit_rows(rng), unit_rows(rng)
  loss = contrastive.clip_loss(jnp.asarray(x), jnp.asarray(y), SCALE)
  np.testing.assert_allclose(float(loss), clip_reference(x, y, SCALE), rtol=1e-5)
  assert float(loss) > 0.5  # random embeddings: far from solved, so the check has teeth


def test_siglip_matches_its_formula():
  rng = np.random.default_rng(2)
  x, y = unit_rows(rng), unit_rows(rng)
  loss = contrastive.siglip_loss(jnp.asarray(x), jnp.asarray(y), SCALE, BIAS)
  np.testing.assert_allclose(float(loss), siglip_reference(x, y, SCALE, BIAS), rtol=1e-5)


def losses_and_grads(images, texts, scale, bias, caption_ids, weights, *, mesh):
  """Both losses and their gradients w.r.t. embeddings, scale (and bias): one compile."""
  options = dict(caption_ids=caption_ids, weights=weights, mesh=mesh)
  clip = jax.value_and_grad(
      lambda x, y, t: contrastive.clip_loss(x, y, t, **options), argnums=(0, 1, 2))
  siglip = jax.value_and_grad(
      lambda x, y, t, b: contrastive.siglip_loss(x, y, t, b, **options), argnums=(0, 1, 2, 3))
  return clip(images, texts, scale), siglip(images, texts, scale, bias)


@pytest.fixture(scope="module")
def single_device(batch):
  run = jax.jit(functools.partial(losses_and_grads, mesh=None))
  return run(batch.images, batch.texts, SCALE, BIAS, batch.caption_ids, batch.weights)


@pytest.mark.parametrize("path", ["global_jit", "shard_map"])
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1)], ids=["data8", "data2_fsdp4"])
def test_sharded_batch_gives_single_device_losses_and_gradients(batch, single_device,
                                                                mesh_shape, path):
  mesh = make_mesh(SimpleNamespace(shape=mesh_shape))
  rows = NamedSharding(mesh, PartitionSpec(contrastive.BATCH_AXES))
  sharded = [jax.device_put(a, rows) for a in (batch.images, batch.texts, batch.caption_ids,
                                                batch.weights)]
  assert len(sharded[0].sharding.device_set) == 8
  run = jax.jit(functools.partial(losses_and_grads,
                                  mesh=mesh if path == "shard_map" else None))
  got = run(sharded[0], sharded[1], SCALE, BIAS, *sharded[2:])
  if path == "shard_map":  # each device holds [N / 8, N] similarities, never the N x N matrix
    program = run.lower(sharded[0], sharded[1], SCALE, BIAS, *sharded[2:]).compile().as_text()
    assert f"f32[{N // 8},{N}]" in program and f"[{N},{N}]" not in program
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
               got, single_device)
  # The gradients are not trivially zero: every input receives some.
  (_, clip_grads), (_, siglip_grads) = got
  for grad in (*clip_grads, *siglip_grads):
    assert float(jnp.abs(grad).max()) > 1e-3


def test_duplicate_caption_is_not_a_negative(batch):
  x, y, ids = batch.images, batch.texts, batch.caption_ids
  masked = float(contrastive.clip_loss(x, y, SCALE, caption_ids=ids))
  np.testing.assert_allclose(masked, clip_reference(x, y, SCALE, drop=[(0, 3), (3, 0)]),
                             rtol=1e-5)
  # Without the ids, image 0 is pushed away from its own caption's copy in row 3.
  assert float(contrastive.clip_loss(x, y, SCALE)) > masked + 1e-3
  # Which image holds which copy of the caption does not matter.
  swap = [3, 1, 2, 0] + list(range(4, N))
  np.testing.assert_allclose(
      float(contrastive.clip_loss(x[swap], y, SCALE, caption_ids=ids)), masked, rtol=1e-6)
  # SigLIP counts the copy as a second positive.
  np.testing.assert_allclose(
      float(contrastive.siglip_loss(x, y, SCALE, BIAS, caption_ids=ids)),
      siglip_reference(x, y, SCALE, BIAS, positives=[(0, 3), (3, 0)]), rtol=1e-5)


@pytest.mark.parametrize("kind", contrastive.KINDS)
def test_padding_rows_change_nothing(batch, kind):
  real = batch.weights > 0
  bias = BIAS if kind == "siglip" else None
  loss_and_grads = jax.jit(jax.value_and_grad(
      lambda x, y, w: contrastive.contrastive_loss(kind, x, y, SCALE, bias, weights=w),
      argnums=(0, 1)))
  padded, (image_grad, text_grad) = loss_and_grads(batch.images, batch.texts, batch.weights)
  alone, _ = loss_and_grads(batch.images[real], batch.texts[real], batch.weights[real])
  np.testing.assert_allclose(float(padded), float(alone), rtol=1e-6)
  assert float(jnp.abs(image_grad[~real]).max()) == 0
  assert float(jnp.abs(text_grad[~real]).max()) == 0
  if kind == "clip":
    np.testing.assert_allclose(
        float(padded), clip_reference(batch.images, batch.texts, SCALE, weights=batch.weights),
        rtol=1e-5)


def test_temperature_is_clipped_at_100_without_gradient():
  scale_and_grad = jax.value_and_grad(contrastive.clip_logit_scale)
  clipped, clipped_grad = scale_and_grad(jnp.log(200.0))
  assert float(clipped) == contrastive.CLIP_MAX_SCALE and float(clipped_grad) == 0
  free, free_grad = scale_and_grad(jnp.log(50.0))
  np.testing.assert_allclose([float(free), float(free_grad)], [50.0, 50.0], rtol=1e-5)
  log_scale, bias = contrastive.initial_values("clip")
  assert (math.exp(log_scale), bias) == pytest.approx((1 / 0.07, 0.0))
  log_scale, bias = contrastive.initial_values("siglip")
  assert (math.exp(log_scale), bias) == pytest.approx((10.0, -10.0))
  assert float(contrastive.logit_scale_for("siglip", jnp.log(200.0))) == pytest.approx(200.0)


def test_perfectly_aligned_embeddings_have_near_zero_clip_loss():
  aligned = jnp.eye(N, N, dtype=jnp.float32)
  assert float(contrastive.clip_loss(aligned, aligned, contrastive.CLIP_MAX_SCALE)) < 1e-6


def test_bad_inputs_raise_one_line_user_errors():
  x = jnp.zeros((N, D))
  with pytest.raises(UserError, match="text_emb"):
    contrastive.clip_loss(x, jnp.zeros((N, D + 1)), 1.0)
  with pytest.raises(UserError, match="weights"):
    contrastive.clip_loss(x, x, 1.0, weights=jnp.ones(N - 1))
  with pytest.raises(UserError, match="bias"):
    contrastive.contrastive_loss("siglip", x, x, 1.0)
  with pytest.raises(UserError, match="'softmax'"):
    contrastive.contrastive_loss("softmax", x, x, 1.0)
  mesh = make_mesh(SimpleNamespace(shape=(8, 1, 1)))
  with pytest.raises(UserError, match="not divisible by the 8 devices"):
    contrastive.clip_loss(jnp.zeros((12, D)), jnp.zeros((12, D)), 1.0, mesh=mesh)
