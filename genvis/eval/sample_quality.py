"""Sample-quality distances between two sets of features: Fréchet distance and kernel distance.

A generator is judged by how far the features of its samples lie from the features of real
images. The two standard distances are computed here from numpy features `[N, D]`, whatever
network produced them: with Inception-v3 pool features they are FID (Heusel et al. 2017) and
KID (Bińkowski et al. 2018); genvis computes them on a small digits classifier trained by the
repo (genvis/eval/digits_classifier.py), so they are "FD" and "KD" on those features and are
comparable only with figures computed on the same features.

Fréchet distance (FD). Fit a Gaussian to each set (mean, covariance with ddof = 1) and take
the squared 2-Wasserstein distance between the Gaussians:

    FD = |mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)).

The matrix square root: the usual route (pytorch-fid) calls `scipy.linalg.sqrtm(S_a @ S_b)`.
That product is not symmetric, sqrtm works through a complex Schur decomposition, and when a
covariance is singular (fewer samples than dims, a dead ReLU unit) it returns small imaginary
parts or inaccurate values, which pytorch-fid patches with an eps * I offset and by dropping
the imaginary part. Here only symmetric eigendecompositions are used, in float64:
S_a S_b is similar to the symmetric PSD matrix M = S_a^(1/2) S_b S_a^(1/2), so
Tr((S_a S_b)^(1/2)) = sum_i sqrt(lambda_i(M)). `numpy.linalg.eigh` gives real eigenvalues by
construction (no imaginary parts to handle), singular covariances need no offset, and the
eigenvalues that rounding pushes slightly below zero (~1e-16 * |S|) are clipped to zero. A
zero eigenvalue that rounding turns into ~1e-16 still has a square root of ~1e-8, so near a
singular covariance FD is accurate to ~1e-8 relative, as with sqrtm (tested). For the same
reason the final FD, a squared distance, is clipped at zero (identical sets would otherwise
give ~+-1e-13).

FD is biased by the sample size: the plug-in mean and covariance are noisy, and the noise
only adds distance, by roughly O(D / N) on the trace term (Chong & Forsyth 2020,
"Effectively unbiased FID"). An FD is therefore only comparable with another computed at the
same N against the same reference set; `train_test_floor` gives the floor at a matched N.

Kernel distance (KD, "KID"). The squared maximum mean discrepancy with the cubic polynomial
kernel k(x, y) = (x . y / D + 1)^3, estimated without bias:

    MMD^2_u = sum_{i != j} k(a_i, a_j) / (m (m-1)) + sum_{i != j} k(b_i, b_j) / (m (m-1))
              - 2 sum_{i, j} k(a_i, b_j) / m^2,

on `num_subsets` random subsets of m = `subset_size` rows of each set (drawn without
replacement within a subset, independently across subsets, as in the paper's code), reported
as the mean over subsets and their standard deviation (ddof = 0). The estimator is unbiased,
so it can be slightly negative when the two distributions match, and its expectation does not
depend on N; the std is the spread of one subset's estimate, not the standard error of the
mean (the subsets overlap). For the kernel's meaning: in one dimension its feature map is
(x^3, sqrt(3) x^2, sqrt(3) x, 1), so KD compares the first three moments; for N(0, 1)
against N(delta, 1) it is 12 delta^2 + 9 delta^4 + delta^6 (tested).
"""

import dataclasses
from typing import Callable

import numpy as np

from genvis.errors import UserError

DEFAULT_KID_SUBSETS = 100
DEFAULT_KID_SUBSET_SIZE = 1000
METRICS = ("fd", "kid")


@dataclasses.dataclass(frozen=True)
class KernelDistance:
  """A kernel distance (MMD^2_u) averaged over random subsets.

  Attributes:
    mean: the mean of the subset estimates (the reported KID).
    std: their standard deviation (ddof = 0).
    subset_size: rows drawn from each set per subset.
    num_subsets: how many subsets were averaged.
  """

  mean: float
  std: float
  subset_size: int
  num_subsets: int


# --------------------------------------------------------------------------- validation
def _check_features(name: str, features, min_rows: int = 2) -> np.ndarray:
  """`features` as float64 [N, D], or a UserError naming `name` and its shape."""
  array = np.asarray(features)
  if array.ndim != 2:
    raise UserError(f"sample_quality: {name} has shape {array.shape}; expected [examples, dim]")
  if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype,
                                                                 np.complexfloating):
    raise UserError(f"sample_quality: {name} has dtype {array.dtype}; expected real numbers")
  if len(array) < min_rows:
    raise UserError(f"sample_quality: {name} has {len(array)} rows (shape {array.shape}); "
                    f"expected at least {min_rows}")
  bad = array.size - np.count_nonzero(np.isfinite(array))
  if bad:
    raise UserError(f"sample_quality: {name} (shape {array.shape}) holds {bad} NaN/inf "
                    f"values; features must be finite")
  return array.astype(np.float64)


def _check_pair(features_a, features_b, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
  a = _check_features("features_a", features_a, min_rows)
  b = _check_features("features_b", features_b, min_rows)
  if a.shape[1] != b.shape[1]:
    raise UserError(f"sample_quality: features_a has shape {a.shape} but features_b has shape "
                    f"{b.shape}; the feature dims must match")
  return a, b


# ------------------------------------------------------------------------ Fréchet distance
def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], covariance [D, D] with ddof = 1) of features [N, D], in float64."""
  array = _check_features("features", features)
  return array.mean(axis=0), np.cov(array, rowvar=False, ddof=1).reshape(array.shape[1], -1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """The symmetric square root of a symmetric PSD matrix (negative rounding residue -> 0)."""
  eigenvalues, eigenvectors = np.linalg.eigh(matrix)
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
  """Tr((cov_a cov_b)^(1/2)) for symmetric PSD matrices, via symmetric eigendecompositions.

  cov_a cov_b = S (S cov_b S) S^-1 with S = cov_a^(1/2) (when cov_a is invertible; the trace
  identity extends to singular cov_a by continuity), so its eigenvalues are those of the PSD
  matrix S cov_b S, whose square roots sum to the trace wanted.
  """
  sqrt_a = _psd_sqrt(cov_a)
  middle = sqrt_a @ cov_b @ sqrt_a
  middle = (middle + middle.T) / 2  # remove the asymmetry that rounding adds
  return float(np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum())


def frechet_distance_from_statistics(mean_a, cov_a, mean_b, cov_b) -> float:
  """FD between Gaussians N(mean_a, cov_a) and N(mean_b, cov_b); covariances symmetric PSD."""
  mean_a, mean_b = (np.asarray(m, np.float64) for m in (mean_a, mean_b))
  cov_a, cov_b = (np.asarray(c, np.float64) for c in (cov_a, cov_b))
  dim = mean_a.shape[0] if mean_a.ndim == 1 else -1
  for name, value, shape in (("mean_a", mean_a, (dim,)), ("mean_b", mean_b, (dim,)),
                             ("cov_a", cov_a, (dim, dim)), ("cov_b", cov_b, (dim, dim))):
    if value.shape != shape:
      raise UserError(f"frechet_distance_from_statistics: {name} has shape {value.shape}; "
                      f"expected {shape} (means [D], covariances [D, D])")
  mean_term = float(np.sum((mean_a - mean_b) ** 2))
  trace_term = np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt_product(cov_a, cov_b)
  return max(mean_term + float(trace_term), 0.0)


def frechet_distance(features_a, features_b) -> float:
  """FD between Gaussians fitted to features_a [N_a, D] and features_b [N_b, D].

  Biased upwards by finite N: compare only FDs computed at the same sizes (module docstring).
  """
  a, b = _check_pair(features_a, features_b)
  return frechet_distance_from_statistics(*feature_statistics(a), *feature_statistics(b))


# ------------------------------------------------------------------------- kernel distance
def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(x, y) = (x . y / D + 1)^3 for all pairs of rows: [m, D] x [n, D] -> [m, n]."""
  base = x @ y.T / x.shape[1] + 1.0
  return base * base * base  # 4x faster than base ** 3 in numpy


def unbiased_mmd2(a: np.ndarray, b: np.ndarray) -> float:
  """MMD^2_u with the cubic polynomial kernel between equal-size sets a, b [m, D], m >= 2."""
  m = len(a)
  k_aa, k_bb, k_ab = _polynomial_kernel(a, a), _polynomial_kernel(b, b), _polynomial_kernel(a, b)
  within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
  within_b = (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
  return float(within_a + within_b - 2.0 * k_ab.sum() / (m * m))


def kernel_distance(features_a, features_b, *, num_subsets: int = DEFAULT_KID_SUBSETS,
                    subset_size: int | None = None, seed: int = 0) -> KernelDistance:
  """KD (KID on Inception features): MMD^2_u averaged over random subsets.

  Args:
    features_a, features_b: features [N_a, D] and [N_b, D].
    num_subsets: how many subset pairs to average over (the paper: 100).
    subset_size: rows per subset from each set; None: min(1000, N_a, N_b) (the paper's
      1000, capped by the data). With subset_size == N_a == N_b every subset is the whole
      set and the std is 0.
    seed: seeds the subset draws.

  Returns:
    A `KernelDistance` (mean, std over subsets, subset_size, num_subsets).
  """
  a, b = _check_pair(features_a, features_b)
  available = min(len(a), len(b))
  if subset_size is None:
    subset_size = min(DEFAULT_KID_SUBSET_SIZE, available)
  if isinstance(subset_size, bool) or not isinstance(subset_size, (int, np.integer)) or not (
      2 <= subset_size <= available):
    raise UserError(f"kernel_distance: subset_size={subset_size!r} but the sets have "
                    f"{len(a)} and {len(b)} rows; expected an int in 2..{available}")
  if isinstance(num_subsets, bool) or not isinstance(num_subsets,
                                                     (int, np.integer)) or num_subsets < 1:
    raise UserError(f"kernel_distance: num_subsets={num_subsets!r}; expected a positive int")
  rng = np.random.default_rng(seed)
  estimates = []
  for _ in range(num_subsets):
    rows_a = rng.choice(len(a), subset_size, replace=False)
    rows_b = rng.choice(len(b), subset_size, replace=False)
    estimates.append(unbiased_mmd2(a[rows_a], b[rows_b]))
  return KernelDistance(mean=float(np.mean(estimates)), std=float(np.std(estimates)),
                        subset_size=int(subset_size), num_subsets=int(num_subsets))


# ------------------------------------------------------------------------ train-test floor
def _metric_fn(metric) -> Callable:
  if callable(metric):
    return metric
  if metric == "fd":
    return frechet_distance
  if metric == "kid":
    return kernel_distance
  raise UserError(f"train_test_floor: metric={metric!r}; expected one of "
                  f"{', '.join(METRICS)} or a callable (features_a, features_b) -> value")


def train_test_floor(features_train, features_test, metric="fd", *,
                     num_samples: int | None = None, seed: int = 0):
  """The metric between real training and real test features: the floor for a generator.

  A perfect generator is a fresh draw from the data distribution, exactly what the test
  split is. So `metric(features_train, generated[:num_samples])` is read next to
  `train_test_floor(features_train, features_test, metric, num_samples=num_samples)`: both
  use the full training features as the reference and `num_samples` rows on the other side,
  which matters because FD grows as N shrinks (module docstring). A generator's figure
  close to the floor is as close as held-out real data gets; below it suggests copying the
  training set.

  Args:
    features_train: reference features [N_train, D] (the real training images).
    features_test: held-out real features [N_test, D].
    metric: "fd", "kid" (defaults of `kernel_distance`), or a callable (a, b) -> value.
    num_samples: rows of the test features to use, the number of generated samples the
      generator is scored with; None: all of them. A smaller N draws a seeded subset.
    seed: seeds the subset draw (and nothing else).

  Returns:
    Whatever the metric returns: a float for "fd", a `KernelDistance` for "kid".
  """
  train = _check_features("features_train", features_train)
  test = _check_features("features_test", features_test)
  metric_fn = _metric_fn(metric)
  if num_samples is None:
    num_samples = len(test)
  if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or not (
      2 <= num_samples <= len(test)):
    raise UserError(f"train_test_floor: num_samples={num_samples!r} but features_test has "
                    f"{len(test)} rows; expected an int in 2..{len(test)} (score the "
                    f"generator with as many samples as the floor uses)")
  if num_samples < len(test):
    rows = np.sort(np.random.default_rng(seed).choice(len(test), num_samples, replace=False))
    test = test[rows]
  return metric_fn(train, test)
