"""FD and KD against closed forms, and the digits classifier whose features they are run on.

Closed forms used:
- FD between Gaussians with commuting covariances (same eigenvectors):
  |mu_a - mu_b|^2 + sum_i (sqrt(s_a,i) - sqrt(s_b,i))^2 over the shared eigenvalues;
- for 2x2 matrices with positive eigenvalues, Tr(A^(1/2)) = sqrt(Tr A + 2 sqrt(det A)), which
  gives a non-commuting case with no matrix square root at all;
- KD in 1-D: the kernel (x y + 1)^3 has feature map (x^3, sqrt(3) x^2, sqrt(3) x, 1), so the
  unbiased MMD^2 is a function of the power sums S_k = sum_i x_i^k, and for N(0, 1) against
  N(delta, 1) its expectation is 12 delta^2 + 9 delta^4 + delta^6.
"""

import numpy as np
import pytest
import scipy.linalg
from scipy import stats

from genvis.data import digits
from genvis.errors import UserError
from genvis.eval import digits_classifier
from genvis.eval import sample_quality


def rotation(dim: int, seed: int) -> np.ndarray:
  """A random orthogonal matrix."""
  return np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))[0]


def random_spd(dim: int, seed: int) -> np.ndarray:
  factor = np.random.default_rng(seed).normal(size=(dim, dim))
  return factor @ factor.T / dim + 0.1 * np.eye(dim)


def features_with_moments(mean, cov, count: int, seed: int) -> np.ndarray:
  """`count` rows whose sample mean and covariance (ddof = 1) are exactly `mean` and `cov`."""
  noise = np.random.default_rng(seed).normal(size=(count, len(mean)))
  noise -= noise.mean(axis=0)
  whitened = noise @ np.linalg.inv(np.linalg.cholesky(np.cov(noise, rowvar=False))).T
  return mean + whitened @ np.linalg.cholesky(cov).T


# ------------------------------------------------------------------------ Fréchet distance
def test_fd_of_identical_sets_is_zero():
  features = np.random.default_rng(0).normal(size=(300, 16)) * 3.0
  assert sample_quality.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-9)
  # Fewer rows than dims: a singular covariance needs no eps offset.
  few = features[:10]
  assert sample_quality.frechet_distance(few, few) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("shared_basis", [False, True])
def test_fd_matches_closed_form_for_commuting_covariances(shared_basis):
  eig_a, eig_b = np.array([4.0, 1.0, 0.25, 0.0]), np.array([1.0, 1.0, 1.0, 2.0])
  basis = rotation(4, seed=1) if shared_basis else np.eye(4)
  cov_a, cov_b = basis @ np.diag(eig_a) @ basis.T, basis @ np.diag(eig_b) @ basis.T
  mean_a, mean_b = np.array([1.0, 0.0, -1.0, 2.0]), np.array([0.0, 0.5, -1.0, 0.0])
  expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(eig_a) - np.sqrt(eig_b)) ** 2)
  got = sample_quality.frechet_distance_from_statistics(mean_a, cov_a, mean_b, cov_b)
  # The zero eigenvalue of cov_a, rotated, comes back as ~1e-16 whose square root is ~1e-8:
  # any square-root route loses that much near a singular matrix (scipy's sqrtm: 5e-9 here).
  assert got == pytest.approx(expected, rel=1e-7)


def test_fd_from_features_uses_sample_mean_and_unbiased_covariance():
  mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  cov_a, cov_b = np.diag([1.0, 2.0, 3.0]), np.diag([2.0, 2.0, 0.5])
  expected = np.sum((mean_a - mean_b) ** 2) + np.sum(
      (np.sqrt(np.diag(cov_a)) - np.sqrt(np.diag(cov_b))) ** 2)
  features_a = features_with_moments(mean_a, cov_a, 50, seed=0)
  features_b = features_with_moments(mean_b, cov_b, 80, seed=1)
  assert sample_quality.frechet_distance(features_a, features_b) == pytest.approx(expected,
                                                                                  rel=1e-9)


def test_fd_non_commuting_2x2_matches_trace_formula():
  cov_a = np.array([[2.0, 0.9], [0.9, 1.0]])
  cov_b = np.array([[0.5, -0.3], [-0.3, 3.0]])
  assert not np.allclose(cov_a @ cov_b, cov_b @ cov_a)
  product = cov_a @ cov_b
  trace_sqrt = np.sqrt(np.trace(product) + 2 * np.sqrt(np.linalg.det(product)))
  mean_a, mean_b = np.array([0.3, -0.2]), np.array([0.0, 0.4])
  expected = (np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
              - 2 * trace_sqrt)
  got = sample_quality.frechet_distance_from_statistics(mean_a, cov_a, mean_b, cov_b)
  assert got == pytest.approx(expected, rel=1e-10)


def test_fd_matches_scipy_sqrtm_on_well_conditioned_covariances():
  cov_a, cov_b = random_spd(8, seed=2), random_spd(8, seed=3)
  reference_trace = np.real(scipy.linalg.sqrtm(cov_a @ cov_b)).trace()  # pytorch-fid's route
  assert sample_quality.trace_sqrt_product(cov_a, cov_b) == pytest.approx(reference_trace,
                                                                          rel=1e-9)
  # The definition is symmetric although the product is not.
  assert sample_quality.trace_sqrt_product(cov_b, cov_a) == pytest.approx(reference_trace,
                                                                          rel=1e-9)


def test_fd_is_biased_upwards_by_small_samples():
  reference = np.random.default_rng(0).normal(size=(2000, 8))
  held_out = np.random.default_rng(1).normal(size=(400, 8))
  small = sample_quality.train_test_floor(reference, held_out, "fd", num_samples=40)
  large = sample_quality.train_test_floor(reference, held_out, "fd", num_samples=400)
  assert small > 3 * large  # bias ~ D / N: same distribution, 10x fewer samples


def test_fd_rejects_bad_features():
  good = np.zeros((5, 3))
  with pytest.raises(UserError, match=r"features_b has shape \(5, 4\)"):
    sample_quality.frechet_distance(good, np.zeros((5, 4)))
  with pytest.raises(UserError, match="features_a has shape"):
    sample_quality.frechet_distance(np.zeros(5), good)
  with pytest.raises(UserError, match="NaN/inf"):
    sample_quality.frechet_distance(good, np.full((5, 3), np.nan))
  with pytest.raises(UserError, match="at least 2"):
    sample_quality.frechet_distance(good, np.zeros((1, 3)))
  with pytest.raises(UserError, match="cov_b has shape"):
    sample_quality.frechet_distance_from_statistics(np.zeros(2), np.eye(2), np.zeros(2),
                                                    np.eye(3))


# ------------------------------------------------------------------------- kernel distance
def brute_force_mmd2(a, b):
  kernel = lambda x, y: (np.dot(x, y) / len(x) + 1.0) ** 3
  m = len(a)
  within_a = sum(kernel(a[i], a[j]) for i in range(m) for j in range(m) if i != j)
  within_b = sum(kernel(b[i], b[j]) for i in range(m) for j in range(m) if i != j)
  cross = sum(kernel(a[i], b[j]) for i in range(m) for j in range(m))
  return (within_a + within_b) / (m * (m - 1)) - 2 * cross / m**2


def test_kd_with_whole_sets_is_the_unbiased_mmd2():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.5
  result = sample_quality.kernel_distance(a, b, num_subsets=3, subset_size=6)
  assert result.mean == pytest.approx(brute_force_mmd2(a, b), rel=1e-12)
  assert result.std == pytest.approx(0.0, abs=1e-12)  # every subset is a permutation
  assert (result.subset_size, result.num_subsets) == (6, 3)


def test_kd_in_1d_equals_its_power_sum_form():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=40), rng.normal(size=40) + 0.7
  power = lambda x, k: np.sum(x**k)
  m = len(a)

  def pair_sum(x, y):  # sum_{i, j} (x_i y_j + 1)^3 through the feature map
    return (power(x, 3) * power(y, 3) + 3 * power(x, 2) * power(y, 2)
            + 3 * power(x, 1) * power(y, 1) + m * m)

  def within(x):  # sum over i != j
    return (pair_sum(x, x) - np.sum((x * x + 1) ** 3)) / (m * (m - 1))

  expected = within(a) + within(b) - 2 * pair_sum(a, b) / m**2
  got = sample_quality.kernel_distance(a[:, None], b[:, None], num_subsets=1, subset_size=m)
  assert got.mean == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_kd_of_a_1d_mean_shift_is_12d2_plus_9d4_plus_d6(delta):
  # N(0, 1) as 1,000 quantiles rescaled to exact moments (mean 0, variance 1, skew 0); the
  # estimate then differs from the population value only by an O(1/m) term of the fixed set
  # (observed -1.6 %, -0.5 %, -0.15 %), well inside 2.5 %, while the value spans 3.6..256.
  grid = stats.norm.ppf((np.arange(1000) + 0.5) / 1000)
  grid = (grid / np.sqrt(np.mean(grid**2)))[:, None]
  got = sample_quality.kernel_distance(grid, grid + delta, num_subsets=1, subset_size=1000)
  assert got.mean == pytest.approx(12 * delta**2 + 9 * delta**4 + delta**6, rel=0.025)


def test_kd_is_near_zero_for_one_distribution_and_positive_for_a_shift():
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
  same = sample_quality.kernel_distance(a, b, num_subsets=20, subset_size=200, seed=0)
  shifted = sample_quality.kernel_distance(a, b + 0.5, num_subsets=20, subset_size=200, seed=0)
  assert same.std > 0
  assert abs(same.mean) < 3 * same.std
  assert shifted.mean > 5 * shifted.std  # measured 1.37 +- 0.18


def test_kd_subset_size_is_checked_and_defaults_to_the_data():
  a = np.zeros((30, 2))
  assert sample_quality.kernel_distance(a, a[:20], num_subsets=2).subset_size == 20
  with pytest.raises(UserError, match="subset_size=50"):
    sample_quality.kernel_distance(a, a, subset_size=50)
  with pytest.raises(UserError, match="num_subsets=0"):
    sample_quality.kernel_distance(a, a, num_subsets=0)


# ------------------------------------------------------------------------ train-test floor
def test_floor_scores_the_full_reference_against_num_samples_test_rows():
  train, test = np.arange(40.0).reshape(20, 2), np.arange(24.0).reshape(12, 2)
  seen = []
  metric = lambda a, b: seen.append((a.shape, b.shape)) or 1.5
  assert sample_quality.train_test_floor(train, test, metric, num_samples=5) == 1.5
  assert seen == [((20, 2), (5, 2))]
  # Seeded: the same draw gives the same figure, as FD of that subset.
  floor = sample_quality.train_test_floor(train, test, "fd", num_samples=5, seed=3)
  assert floor == sample_quality.train_test_floor(train, test, "fd", num_samples=5, seed=3)
  with pytest.raises(UserError, match="num_samples=13"):
    sample_quality.train_test_floor(train, test, "fd", num_samples=13)
  with pytest.raises(UserError, match="metric='fid'"):
    sample_quality.train_test_floor(train, test, "fid")


# ---------------------------------------------------------------------- digits classifier
@pytest.fixture(scope="module")
def digits_setup():
  """A classifier trained for 100 steps (98.7 % test accuracy) and the features it gives."""
  train_images, train_labels = digits.load_digits("train")
  test_images, test_labels = digits.load_digits("test")
  params, apply_fn = digits_classifier.train_digits_classifier(train_images, train_labels,
                                                               steps=100, seed=0)
  noise = np.random.default_rng(0).uniform(-1, 1, test_images.shape).astype(np.float32)
  return dict(
      params=params, apply_fn=apply_fn, test_images=test_images, test_labels=test_labels,
      train_features=digits_classifier.classifier_features(params, train_images),
      test_features=digits_classifier.classifier_features(params, test_images),
      noise_features=digits_classifier.classifier_features(params, noise))


def test_classifier_reaches_90_percent_on_test_digits(digits_setup):
  accuracy = digits_classifier.classifier_accuracy(
      digits_setup["params"], digits_setup["test_images"], digits_setup["test_labels"])
  assert accuracy > 0.9
  logits = digits_setup["apply_fn"](digits_setup["params"], digits_setup["test_images"][:3])
  assert logits.shape == (3, digits.NUM_CLASSES)


def test_features_are_the_normalised_penultimate_layer(digits_setup):
  features = digits_setup["test_features"]
  assert features.shape == (445, digits_classifier.FEATURE_DIM)
  assert features.dtype == np.float32
  np.testing.assert_allclose(features.mean(axis=1), 0.0, atol=1e-5)
  np.testing.assert_allclose(features.var(axis=1), 1.0, rtol=1e-3)
  # Chunking pads the last chunk; a few images give the rows they give within a large batch.
  few = digits_classifier.classifier_features(digits_setup["params"],
                                              digits_setup["test_images"][:7])
  np.testing.assert_allclose(few, features[:7], atol=1e-5)


def test_train_test_floor_is_small_next_to_noise(digits_setup):
  train, test, noise = (digits_setup[k] for k in ("train_features", "test_features",
                                                   "noise_features"))
  fd_floor = sample_quality.train_test_floor(train, test, "fd")
  fd_noise = sample_quality.frechet_distance(train, noise)
  assert fd_floor < 2.0 and fd_noise > 10 * fd_floor  # measured 0.43 and 24.7
  kd_floor = sample_quality.train_test_floor(
      train, test, lambda a, b: sample_quality.kernel_distance(a, b, num_subsets=10))
  kd_noise = sample_quality.kernel_distance(train, noise, num_subsets=10)
  assert abs(kd_floor.mean) < 0.05 and kd_noise.mean > 0.3  # measured -0.012 and 0.99 (100 subsets)


def test_training_is_deterministic_for_a_seed():
  images, labels = digits.load_digits("train")  # the fixture's shapes: no new compile
  runs = [digits_classifier.train_digits_classifier(images, labels, steps=2, seed=5)[0]
          for _ in range(2)]
  other = digits_classifier.train_digits_classifier(images, labels, steps=2, seed=6)[0]
  first, second, third = (r["params"]["head"]["kernel"] for r in (*runs, other))
  np.testing.assert_array_equal(first, second)
  assert not np.allclose(first, third)


def test_classifier_rejects_images_it_was_not_built_for():
  params = {"params": {"dense": {"kernel": np.zeros((1024, 64))}}}
  with pytest.raises(UserError, match=r"shape \(2, 8, 8\)"):
    digits_classifier.classifier_features(params, np.zeros((2, 8, 8), np.float32))
  with pytest.raises(UserError, match=r"spans \[0, 255\]"):
    digits_classifier.classifier_features(
        params, np.linspace(0, 255, 128, dtype=np.float32).reshape(2, 8, 8, 1))
  with pytest.raises(UserError, match="train_labels span 0..10"):
    digits_classifier.train_digits_classifier(np.zeros((2, 8, 8, 1), np.float32),
                                              np.array([0, 10]), steps=1)
