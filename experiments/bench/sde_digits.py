"""Score SDE on the embedded 8x8 digits: test bits/dim against a full-covariance Gaussian,
sample quality (FD / KD on a digits classifier's features) against the train-test floor.

  python experiments/bench/sde_digits.py [--sde vp] [--steps N] [--workdir DIR]
                                         [--set KEY=VALUE ...]

A --workdir holding a finished run of the same config is evaluated without training again.

1. Trains `configs/sde.py:data=digits,sde=<sde>` (the "cpu" U-Net, continuous DSM, EMA) with
   the generic trainer, then reloads the EMA parameters (`pretrained.load_trained`).
2. Test bits/dim through the probability-flow ODE (Hutchinson-Skilling, one Rademacher
   probe, Tsit5 at --tol) on the first --bpd_examples test digits, dequantised over their 17
   levels; against the Gaussian N(mean, cov) fitted to the dequantised training digits and
   scored on the same test digits the same way (genvis.eval.gaussian_baseline), and
   log2(17) = 4.09 for a uniform over the levels.
3. --samples digits from the PC sampler (reverse diffusion + Langevin, --sample_steps steps);
   Frechet and kernel distances (FD, KD) between their features and the training digits'
   under a small classifier trained by the repo (genvis.eval.digits_classifier), next to the
   same distances for the real test digits (the train-test floor, same N).
4. samples.png (the first 64 samples) and inpainting.png (original | top half | 4
   completions, 8 test digits) in the workdir.

The last line printed is one JSON object with test_bits_per_dim, gaussian_baseline_bits_per_dim,
fd, fd_floor, kd, kd_floor (and timings, NFE, the workdir).

Reference (`python experiments/bench/sde_digits.py --workdir /tmp/bench/sde_digits_vp`, 2-core
CPU shared with other jobs at load 5-8, 17 min 6 s wall): 3,000 steps in 497 s; test
bits/dim 2.233 (128 digits, 56 solver steps, 254 s) against 2.938 for the Gaussian and 4.09
for uniform levels; tol 1e-5 on 64 digits gave 2.2244 against 2.2256 at 1e-4 (108 against 57
solver steps). 445 samples (500 steps, 1,000 NFE, 227 s): FD 1.31 against a floor of 0.46,
KD 0.016 +- 0.012 against -0.013 +- 0.005; the same model with another sampling key gave FD
0.93 (500 steps), 1.12 (100 steps), 1.18 (1,000 steps): at N = 445 FD moves by ~0.2 with the
draw. samples.png shows mostly legible digits; inpainting.png completes the bottom
halves consistently with the given tops.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from genvis import config_lib
from genvis.eval import digits_classifier, gaussian_baseline, sample_quality
from genvis.sampling import image_grid
from genvis.train.pretrained import load_trained
from genvis.train.trainer import Trainer


CLASSIFIER_STEPS = 2000
GRID_SAMPLES = 64
INPAINT_EXAMPLES, INPAINT_PER_EXAMPLE = 8, 4


def train(args, workdir: str) -> float:
  """Trains (or resumes to the end); pictures and likelihoods are left to this script."""
  overrides = {"mesh.shape": (1, 1, 1), "train.progress_bar": False,
               "eval.bpd_examples": 0, "sample.num_samples": 0, "sample.inpaint_examples": 0,
               **config_lib.parse_overrides(args.set)}
  if args.steps:
    overrides["train.steps"] = args.steps
  config = config_lib.load_config(os.path.join(REPO, f"configs/sde.py:data=digits,sde="
                                               f"{args.sde}"), overrides)
  start = time.perf_counter()
  Trainer(config, workdir).train()
  return time.perf_counter() - start


def sample_quality_figures(task, samples: np.ndarray) -> dict:
  """FD and KD of samples vs the training digits, and the real test digits' (the floor)."""
  train_images, test_images = task.train_set.images, task.test_set.images
  params, _ = digits_classifier.train_digits_classifier(
      train_images, task.train_set.labels, steps=CLASSIFIER_STEPS, seed=0)
  features = {name: digits_classifier.classifier_features(params, images)
              for name, images in (("train", train_images), ("test", test_images),
                                   ("samples", np.clip(samples, -1.0, 1.0)))}
  n = len(samples)
  kd = sample_quality.kernel_distance(features["train"], features["samples"])
  kd_floor = sample_quality.train_test_floor(features["train"], features["test"], "kid",
                                             num_samples=n)
  return {
      "fd": round(sample_quality.frechet_distance(features["train"], features["samples"]), 4),
      "fd_floor": round(sample_quality.train_test_floor(features["train"], features["test"],
                                                        "fd", num_samples=n), 4),
      "kd": round(kd.mean, 5), "kd_std": round(kd.std, 5),
      "kd_floor": round(kd_floor.mean, 5), "kd_floor_std": round(kd_floor.std, 5),
      "classifier_test_accuracy": round(digits_classifier.classifier_accuracy(
          params, test_images, task.test_set.labels), 4),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sde", default="vp", choices=("ve", "vp", "subvp"))
  parser.add_argument("--steps", type=int, default=0, help="0: the config's train.steps")
  parser.add_argument("--bpd_examples", type=int, default=128, help="445: every test digit")
  parser.add_argument("--tol", type=float, default=1e-4, help="ODE rtol = atol for bits/dim")
  parser.add_argument("--samples", type=int, default=445, help="for FD / KD (the test size)")
  parser.add_argument("--sample_steps", type=int, default=0, help="0: config sample.num_steps")
  parser.add_argument("--seed", type=int, default=0, help="of the samples")
  parser.add_argument("--workdir", default="", help="default: a new temporary directory")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  args = parser.parse_args()

  workdir = args.workdir or tempfile.mkdtemp(prefix=f"sde_digits_{args.sde}_")
  train_s = train(args, workdir)
  overrides = {"eval.bpd_examples": args.bpd_examples, "eval.likelihood_tol": args.tol}
  if args.sample_steps:
    overrides["sample.num_steps"] = args.sample_steps
  trainer, params = load_trained(workdir, overrides)
  task = trainer.task

  start = time.perf_counter()
  likelihood = task.evaluate_likelihood(params)
  bpd_s = time.perf_counter() - start
  baseline = gaussian_baseline.gaussian_baseline_bits_per_dim(
      task.train_set.images, task.likelihood_examples(), task.num_levels)

  sample_rng, inpaint_rng = jax.random.split(jax.random.key(args.seed))
  start = time.perf_counter()
  result = task.generate(params, sample_rng, args.samples)
  samples = np.asarray(result.x)
  sample_s = time.perf_counter() - start
  quality = sample_quality_figures(task, samples)

  grid = samples[:GRID_SAMPLES].reshape(-1, 8, *task.data_shape)
  scale = image_grid.default_scale(task.data_shape[0])
  image_grid.save_png(os.path.join(workdir, "samples.png"), image_grid.tile(grid, scale=scale))
  originals = task.test_set.images[:INPAINT_EXAMPLES]
  completions = task.inpaint(params, originals, inpaint_rng, INPAINT_PER_EXAMPLE)
  given = originals * (np.arange(8) < 4)[None, :, None, None]
  table = np.concatenate([originals[:, None], given[:, None], completions], axis=1)
  image_grid.save_png(os.path.join(workdir, "inpainting.png"),
                      image_grid.tile(table, scale=scale))

  print(json.dumps({
      "sde": task.config.sde.kind,
      "test_bits_per_dim": round(likelihood["bits_per_dim"], 4),
      "gaussian_baseline_bits_per_dim": round(baseline["bits_per_dim"], 4),
      "uniform_bits_per_dim": round(math.log2(task.num_levels), 4),
      "bpd_examples": args.bpd_examples, "bpd_tol": args.tol,
      "bpd_solver_steps": likelihood["solver_steps"],
      **quality,
      "num_samples": args.samples, "sampler": task.pc_kwargs(),
      "sampler_steps": task.config.sample.num_steps, "sampler_nfe": int(result.nfe),
      "steps": task.config.train.steps, "params": trainer.num_params,
      "train_s": round(train_s, 1), "bpd_s": round(bpd_s, 1), "sample_s": round(sample_s, 1),
      "workdir": workdir,
  }))


if __name__ == "__main__":
  main()
