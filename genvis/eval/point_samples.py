"""How well generated points match a low-dimensional target: mode coverage and energy distance.

On a Gaussian mixture the classic failure of a generator is to drop modes or to smear mass
between them. Two figures catch both (as in the GAN literature's 8-Gaussians / 25-Gaussians
checks, e.g. Metz et al. 2017, Srivastava et al. 2017):

- `mode_coverage`: each sample goes to its nearest mode (in that mode's Mahalanobis
  distance); it is "high quality" when that distance is within `max_std` standard deviations.
  A mode is covered when it holds at least `min_share` of the high-quality samples it should
  get (N times its weight). Reported: modes covered out of K, the high-quality fraction, and
  the worst mode's share of its expected count.
- `energy_distance` (Szekely & Rizzo): 2 E|X - Y| - E|X - X'| - E|Y - Y'|, zero exactly when
  the two distributions are equal, estimated without bias (the within-set means leave out
  the i = j pairs), so two samples of one distribution give ~0 (possibly slightly negative).
  It is computed between generated and true samples and, for scale, between two independent
  true samples of the same size (the floor a perfect generator reaches).
"""

import numpy as np

from genvis.errors import UserError


def _points(name: str, values, dims: int | None = None) -> np.ndarray:
  array = np.asarray(values, np.float64)
  if array.ndim != 2 or len(array) < 2 or (dims is not None and array.shape[1] != dims):
    expected = f"[N >= 2, {dims if dims is not None else 'd'}]"
    raise UserError(f"{name} has shape {list(array.shape)}; expected points {expected}")
  if not np.all(np.isfinite(array)):
    raise UserError(f"{name} holds NaN/inf values")
  return array


def mode_coverage(samples, weights, means, covs, *, max_std: float = 3.0,
                  min_share: float = 0.25) -> dict:
  """Coverage of the mixture sum_k weights[k] N(means[k], covs[k]) by `samples` [N, d].

  Returns {"modes_covered", "num_modes", "high_quality_fraction", "worst_mode_share",
  "counts"}: counts [K] of high-quality samples per mode.
  """
  means = np.asarray(means, np.float64)
  weights = np.asarray(weights, np.float64)
  covs = np.asarray(covs, np.float64)
  if (means.ndim != 2 or weights.shape != means.shape[:1]
      or covs.shape != means.shape + means.shape[1:]):
    raise UserError(f"mode_coverage needs weights [K], means [K, d], covs [K, d, d]; got "
                    f"{list(weights.shape)}, {list(means.shape)}, {list(covs.shape)}")
  samples = _points("samples", samples, means.shape[1])
  precisions = np.linalg.inv(covs)
  centred = samples[:, None, :] - means[None]  # [N, K, d]
  mahalanobis = np.sqrt(np.einsum("nkd,kde,nke->nk", centred, precisions, centred))
  nearest = np.argmin(mahalanobis, axis=1)
  good = mahalanobis[np.arange(len(samples)), nearest] <= max_std
  counts = np.bincount(nearest[good], minlength=len(weights))
  expected = len(samples) * weights / weights.sum()
  share = counts / expected
  return {"modes_covered": int(np.sum(share >= min_share)), "num_modes": len(weights),
          "high_quality_fraction": float(np.mean(good)),
          "worst_mode_share": float(share.min()), "counts": counts.tolist()}


def _mean_distance(a: np.ndarray, b: np.ndarray, *, same: bool) -> float:
  """Mean |a_i - b_j| over all pairs (i != j when a and b are the same set)."""
  squared = (np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :] - 2.0 * a @ b.T)
  distances = np.sqrt(np.maximum(squared, 0.0))
  if same:
    np.fill_diagonal(distances, 0.0)
    return float(distances.sum() / (len(a) * (len(a) - 1)))
  return float(distances.mean())


def energy_distance(samples_a, samples_b) -> float:
  """Unbiased energy distance between point sets [N_a, d] and [N_b, d] (module docs)."""
  a = _points("samples_a", samples_a)
  b = _points("samples_b", samples_b, a.shape[1])
  return (2.0 * _mean_distance(a, b, same=False) - _mean_distance(a, a, same=True)
          - _mean_distance(b, b, same=True))
