"""The full-covariance Gaussian baseline for a continuous density model's bits/dim.

A diffusion model's test bits/dim means little alone. The simplest density that sees every
pixel correlation is one multivariate Gaussian N(mean, cov) over whole images; fitted by
maximum likelihood on the training images it is a closed form, and its test NLL is exact. A
score model that does not beat it has learned no more than the data's second moments.

To compare like with like, the Gaussian is scored exactly as the diffusion model is
(genvis/diffusion/likelihood.py): images on a K-level grid over [low, high] are dequantised
with uniform noise over their bin, U(-w/2, w/2) per dim, both to fit (training images) and to
score (test images), and the same bin offset log2(1 / w) is added, so

    bits/dim = -log2 N(x + u; mean, cov) / d + log2(1 / w),

an upper bound on the discrete test images' NLL, like the model's figure. Fitting on
dequantised training images also keeps the covariance invertible where a pixel is constant
in every training image (the digits' blank corners): its variance is then w^2 / 12.
"""

import math

import numpy as np

from genvis.diffusion import likelihood
from genvis.errors import UserError


def _flat(name: str, images) -> np.ndarray:
  array = np.asarray(images, np.float64)
  if array.ndim < 2 or len(array) < 2:
    raise UserError(f"{name} has shape {list(array.shape)}; expected [N >= 2, ...] examples")
  return array.reshape(len(array), -1)


def dequantize(images: np.ndarray, num_levels: int, seed: int, low: float = -1.0,
               high: float = 1.0) -> np.ndarray:
  """images + U(-w/2, w/2) per dim, w the bin width of num_levels levels (float64)."""
  width = likelihood.bin_width(num_levels, low, high)
  noise = np.random.default_rng(seed).random(images.shape) - 0.5
  return np.asarray(images, np.float64) + width * noise


def fit_gaussian(samples) -> tuple[np.ndarray, np.ndarray]:
  """Maximum-likelihood (mean [d], cov [d, d]) of samples [N, d] (float64)."""
  flat = _flat("samples", samples)
  mean = flat.mean(axis=0)
  centred = flat - mean
  return mean, centred.T @ centred / len(flat)


def gaussian_nll_nats(samples, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
  """-log N(x; mean, cov) per example [N] in nats, via a Cholesky factor."""
  flat = _flat("samples", samples)
  if mean.shape != flat.shape[1:] or cov.shape != (flat.shape[1],) * 2:
    raise UserError(f"samples of {flat.shape[1]} dims against a Gaussian with mean "
                    f"{list(mean.shape)} and cov {list(cov.shape)}")
  try:
    chol = np.linalg.cholesky(cov)
  except np.linalg.LinAlgError as error:
    raise UserError("the fitted covariance is not positive definite: dequantise the data "
                    "or use more examples than dimensions") from error
  whitened = np.linalg.solve(chol, (flat - mean).T)  # [d, N]
  log_det = 2.0 * np.sum(np.log(np.diag(chol)))
  d = flat.shape[1]
  return 0.5 * (d * math.log(2 * math.pi) + log_det + np.sum(whitened**2, axis=0))


def gaussian_baseline_bits_per_dim(train_images, test_images, num_levels: int, *,
                                   low: float = -1.0, high: float = 1.0, seed: int = 0) -> dict:
  """Test bits/dim of N(mean, cov) fitted on the dequantised training images.

  Args:
    train_images, test_images: [N, ...] on the num_levels-level grid over [low, high].
    num_levels: the data's levels (17 for the digits, 256 for 8-bit images).
    seed: seeds the two dequantisation draws.

  Returns:
    {"bits_per_dim": mean over the test images, "bits_per_dim_std": their std,
     "offset": the bin offset included, "num_dims": d}.
  """
  train = _flat("train_images", train_images)
  test = _flat("test_images", test_images)
  if train.shape[1] != test.shape[1]:
    raise UserError(f"train images have {train.shape[1]} dims, test images {test.shape[1]}")
  train_seed, test_seed = np.random.SeedSequence(seed).generate_state(2)
  mean, cov = fit_gaussian(dequantize(train, num_levels, train_seed, low, high))
  nats = gaussian_nll_nats(dequantize(test, num_levels, test_seed, low, high), mean, cov)
  d = train.shape[1]
  offset = likelihood.bits_per_dim_offset(num_levels, low, high)
  bits = nats / (d * math.log(2.0)) + offset
  return {"bits_per_dim": float(bits.mean()), "bits_per_dim_std": float(bits.std()),
          "offset": offset, "num_dims": d}
