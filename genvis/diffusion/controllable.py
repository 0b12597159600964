"""Controllable generation with an unconditional score (Song et al. 2021, section 5 and
appendix I): class-conditional sampling, inpainting and colourisation.

- Class guidance: by Bayes, grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x), so a
  noise-conditional classifier turns any score into a class-conditional one
  (`conditional_score`; scale > 1 sharpens, as in classifier guidance).
- Inpainting (appendix I.2): the known entries y of x are replaced, after every predictor and
  corrector update at time t, by a fresh draw from p_0t(y_t | y) = N(a(t) y, s(t)^2 I), and the
  unknown entries follow the unconditional sampler. At t = 0 the draw is y itself, so the
  known entries come back exactly.
- Colourisation (appendix I.3): the same replacement in a rotated colour space. An orthogonal
  3x3 matrix M whose first column is (1, 1, 1) / sqrt(3) maps RGB to (luminance, two
  chroma) channels; the grey image fixes the first one, the sampler fills in the others.

The replacement is score_sde's approximation, not exact conditioning: the score of the
unknown entries is taken at a y_t drawn independently of them, while the exact conditional
score grad_u log p_t(u_t | y) is not a function of the unconditional score alone. Even for
Gaussian data this pulls the unknown entries' mean part of the way from the conditional mean
back towards the unconditional one: in tests/diffusion/test_samplers.py (VP, 3-D, one entry
known; the test derives the limit) the exact conditional mean is (1.40, -1.10), the
unconditional (0.5, -0.5), and Euler-Maruyama with replacement gives (1.16, -1.03). A
Langevin corrector (pc_sampler's default) narrows the gap, to about (1.35, -1.13) with 500
steps: it relaxes the unknown entries towards p_t(u | y_t) at each t, and y_t -> y as t -> 0.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from genvis.diffusion import samplers
from genvis.diffusion.sde import SDE, broadcast_to_data
from genvis.errors import UserError

# Orthonormal columns: luminance (1, 1, 1)/sqrt(3) and two chroma directions (score_sde's
# colourisation matrix, exactly).
COLOR_BASIS = np.stack([np.ones(3) / np.sqrt(3), np.array([-2.0, 1.0, 1.0]) / np.sqrt(6),
                        np.array([0.0, 1.0, -1.0]) / np.sqrt(2)], axis=1).astype(np.float32)


def conditional_score(score_fn: Callable, classifier_log_prob_fn: Callable, labels,
                      scale=1.0) -> jax.tree_util.Partial:
  """fn(x, t) = score_fn(x, t) + scale * grad_x log p_t(labels | x).

  classifier_log_prob_fn(x [B, ...], t [B]) -> [B, num_classes] logits or log-probabilities
  (normalised here, which leaves log-probabilities unchanged); labels: int [B]. The result
  is a pytree (labels and scale traced), so new labels or scales do not recompile a sampler.
  """
  return jax.tree_util.Partial(_guided_score, samplers.as_score_pytree(score_fn),
                               samplers.as_score_pytree(classifier_log_prob_fn),
                               jnp.asarray(labels, jnp.int32), jnp.asarray(scale, jnp.float32))


def _guided_score(score_fn, classifier_log_prob_fn, labels, scale, x, t):
  def log_prob_of_labels(x):
    log_probs = jax.nn.log_softmax(classifier_log_prob_fn(x, t), axis=-1)
    if log_probs.shape != (x.shape[0], log_probs.shape[-1]) or labels.shape != x.shape[:1]:
      raise UserError(f"class guidance: the classifier must return [B={x.shape[0]}, classes] "
                      f"and labels be [B]; got {list(log_probs.shape)} and "
                      f"{list(labels.shape)}")
    # Examples are independent, so the gradient of the sum is each example's own gradient.
    return jnp.sum(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))
  return score_fn(x, t) + scale * jax.grad(log_prob_of_labels)(x)


class Known(NamedTuple):
  """What the replacement holds fixed, in the (possibly rotated) space where it is known."""
  values: jax.Array                  # [B, ...] the known entries (anything elsewhere)
  mask: jax.Array                    # broadcastable to values: 1 where known, 0 elsewhere
  channel_basis: jax.Array | None    # [C, C] orthogonal, or None: no rotation


# Full float32 precision: GPUs would otherwise round these products to TF32 and lose the
# exactness of the kept channel (~1e-3).
def _rotate(x, basis):
  return x if basis is None else jnp.matmul(x, basis, precision=jax.lax.Precision.HIGHEST)


def _unrotate(y, basis):
  return y if basis is None else jnp.matmul(y, basis.T, precision=jax.lax.Precision.HIGHEST)


def replace_known(sde: SDE, known: Known, x, x_mean, t, rng):
  """Known entries <- a(t) y + s(t) z (the mean a(t) y for x_mean); samplers.pc_sampler calls
  it after every update, with t the time x is at (t = 0 gives y exactly)."""
  a, std = samplers.kernel(sde, t)
  noised_mean = broadcast_to_data(a, known.values) * known.values
  noised = noised_mean + broadcast_to_data(std, known.values) * jax.random.normal(
      rng, known.values.shape)

  def replace(x, replacement):
    # y (1 - m) + r m, not y + m (r - y): with m = 1 it returns r bit for bit.
    y = _rotate(x, known.channel_basis)
    return _unrotate(y * (1.0 - known.mask) + replacement * known.mask, known.channel_basis)
  return replace(x, noised), replace(x_mean, noised_mean)


def _check_pc_kwargs(pc_kwargs):
  taken = {"constrain", "constraint", "shape"} & set(pc_kwargs)
  if taken:
    raise UserError(f"{sorted(taken)} are set by the inpainting / colourisation sampler")


def inpainting_sampler(sde: SDE, score_fn, data, mask, rng, num_steps, **pc_kwargs):
  """Samples of the entries of `data` [B, ...] where `mask` is 0, given those where it is 1.

  mask broadcasts to data (e.g. [H, W, 1] for every example and channel); pc_kwargs go to
  samplers.pc_sampler (predictor, corrector, snr, ...). Returns samplers.Samples.
  """
  _check_pc_kwargs(pc_kwargs)
  data = jnp.asarray(data, jnp.float32)
  mask = jnp.asarray(mask, jnp.float32)
  try:
    broadcast = jnp.broadcast_shapes(mask.shape, data.shape)
  except ValueError:
    broadcast = None
  if broadcast != data.shape:
    raise UserError(f"inpainting mask of shape {list(mask.shape)} does not broadcast to the "
                    f"data's {list(data.shape)}")
  return samplers.pc_sampler(sde, score_fn, data.shape, rng, num_steps,
                             constrain=replace_known, constraint=Known(data, mask, None),
                             **pc_kwargs)


def colorization_sampler(sde: SDE, score_fn, images, rng, num_steps, **pc_kwargs):
  """Colour images [B, ..., 3] whose per-pixel channel mean is that of `images`.

  Pass the grey image repeated over 3 channels (or any colour image, to recolour it while
  keeping its grey levels). pc_kwargs go to samplers.pc_sampler. Returns samplers.Samples.
  """
  _check_pc_kwargs(pc_kwargs)
  images = jnp.asarray(images, jnp.float32)
  if images.ndim < 2 or images.shape[-1] != 3:
    raise UserError(f"colourisation needs images [B, ..., 3] (grey repeated over RGB), got "
                    f"{list(images.shape)}")
  basis = jnp.asarray(COLOR_BASIS)
  mask = jnp.asarray([1.0, 0.0, 0.0])  # the luminance channel is known
  known = Known(_rotate(images, basis) * mask, mask, basis)
  return samplers.pc_sampler(sde, score_fn, images.shape, rng, num_steps,
                             constrain=replace_known, constraint=known, **pc_kwargs)
