"""MAE on the embedded digits: masked-patch MSE vs baselines, probes, the encoder's speed-up.

  python experiments/bench/mae_digits.py [--steps N] [--workdir DIR] [--set KEY=VALUE ...]
  python experiments/bench/mae_digits.py --data scenes   # 16x16 scenes, 4x4 patches

With --data scenes the probes classify the first object's shape (4 classes).

1. Pre-trains `configs/mae.py:data=digits` (8x8 digits, 2x2 patches, 75 % masked) with the
   generic trainer, which writes reconstructions_step<N>.png (original | masked |
   reconstruction | visible patches pasted back). Test masked-patch MSE against predicting
   the mean training patch, or the mean image's patch, for every masked patch (same masks).
2. Linear probes (`genvis.eval.probe`) on the encoder's mean-pooled patch tokens of whole
   images: full label and 1/5/10 labels per class (10 seeds, mean ± std), against raw pixels
   and a randomly initialised encoder of the same shape.
3. The paper's efficiency claim: train-step time of the encoder fed mask tokens for every
   patch ("w/ [M]") over the encoder on the visible patches only, at decoder depth 1 and 8,
   timed side by side on the same batches (`--timed_steps` steps after compilation).

The last line printed is one JSON object with masked_mse, mean_patch_mse, mean_image_mse,
probe_fewshot / probe_full for mae, raw_pixels and random_encoder, and speedup_visible_only
(step-time ratio w/ [M] / visible-only, per decoder depth).

Fine-tuning accuracy, the mask-ratio / decoder ablations and the accuracy of the "w/ [M]"
encoder are experiments/bench/mae_ablations.py's.
"""

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
# genvis before jax: its CPU malloc settings must precede JAX's threads (genvis/__init__.py).
import genvis  # pylint: disable=unused-import
import jax

from genvis import config_lib
from genvis.eval import probe
from genvis.train.pretrained import load_trained
from genvis.train.trainer import Trainer

SHOTS = (1, 5, 10)


def spec(data: str) -> str:
  return os.path.join(REPO, f"configs/mae.py:data={data}")


def step_seconds(data: str, overrides: dict, steps: int) -> float:
  """Seconds per compiled train step of the config with `overrides` (one device)."""
  config = config_lib.load_config(spec(data), overrides)
  with tempfile.TemporaryDirectory() as workdir:
    trainer = Trainer(config, workdir, devices=jax.devices()[:1])
    state = trainer.restore_or_init()
    train_step = trainer.compile_train_step()
    batches = [trainer.global_batch(trainer.task.train_batch(s)) for s in range(steps + 2)]
    for batch in batches[:2]:  # warm-up
      state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for batch in batches[2:]:
      state, metrics = train_step(state, batch)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / steps


def summary_of(entry: dict) -> dict:
  return {"full": round(entry["full"], 4),
          "fewshot": {str(k): round(v["mean"], 4) for k, v in entry["few_shot"].items()},
          "fewshot_std": {str(k): round(v["std"], 4) for k, v in entry["few_shot"].items()}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default="digits", choices=("digits", "scenes"))
  parser.add_argument("--steps", type=int, default=0, help="0: the config's train.steps")
  parser.add_argument("--workdir", default="", help="default: a new temporary directory")
  parser.add_argument("--seeds", type=int, default=10, help="few-shot draws per shot count")
  parser.add_argument("--timed_steps", type=int, default=20)
  parser.add_argument("--decoder_depths", default="1,8")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override, e.g. model.mask_ratio=0.5")
  args = parser.parse_args()

  overrides = {"mesh.shape": (1, 1, 1), **config_lib.parse_overrides(args.set)}
  if args.steps:
    overrides["train.steps"] = args.steps
  config = config_lib.load_config(spec(args.data), overrides)
  workdir = args.workdir or tempfile.mkdtemp(prefix=f"mae_{args.data}_")
  start = time.perf_counter()
  summary = Trainer(config, workdir).train()
  train_s = time.perf_counter() - start

  trainer, params = load_trained(workdir)
  task = trainer.task
  train_set, test_set = task.train_set, task.test_set
  random_params = jax.jit(task.init_variables)(jax.random.key(config.seed + 1))["params"]
  random_params = jax.tree.map(lambda x: getattr(x, "value", x), random_params,
                               is_leaf=lambda x: hasattr(x, "value"))
  flat = lambda images: images.reshape(len(images), -1)
  feature_sets = {
      "mae": (task.features(params, train_set.images), task.features(params, test_set.images)),
      "raw_pixels": (flat(train_set.images), flat(test_set.images)),
      "random_encoder": (task.features(random_params, train_set.images),
                         task.features(random_params, test_set.images)),
  }
  start = time.perf_counter()
  probes = {name: summary_of(probe.probe_features(train_x, train_set.labels, test_x,
                                                  test_set.labels, shots=SHOTS,
                                                  seeds=args.seeds))
            for name, (train_x, test_x) in feature_sets.items()}
  probe_s = time.perf_counter() - start
  for name, result in probes.items():
    print(f"{name:>15}: full {100 * result['full']:.1f} %, few-shot "
          + ", ".join(f"{k}: {100 * v:.1f} ± {100 * result['fewshot_std'][k]:.1f} %"
                      for k, v in result["fewshot"].items()))

  speedup, step_ms = {}, {}
  for depth in (int(d) for d in args.decoder_depths.split(",")):
    base = {**overrides, "model.decoder_layers": depth, "train.progress_bar": False}
    visible = step_seconds(args.data, base, args.timed_steps)
    with_mask_tokens = step_seconds(args.data, {**base, "model.encoder_mask_tokens": True},
                                    args.timed_steps)
    speedup[f"decoder_depth_{depth}"] = round(with_mask_tokens / visible, 3)
    step_ms[f"decoder_depth_{depth}"] = {"visible_only": round(1e3 * visible, 2),
                                         "with_mask_tokens": round(1e3 * with_mask_tokens, 2)}
    print(f"decoder depth {depth}: {1e3 * visible:.1f} ms/step visible-only, "
          f"{1e3 * with_mask_tokens:.1f} ms/step w/ [M]", flush=True)

  result = {
      "data": args.data,
      "masked_mse": round(summary["val_loss"], 5),
      "mean_patch_mse": round(summary["val_mean_patch_mse"], 5),
      "mean_image_mse": round(summary["val_mean_image_mse"], 5),
      "probe_fewshot": {name: r["fewshot"] for name, r in probes.items()},
      "probe_fewshot_std": {name: r["fewshot_std"] for name, r in probes.items()},
      "probe_full": {name: r["full"] for name, r in probes.items()},
      "speedup_visible_only": speedup,
      "step_ms": step_ms,
      "steps": summary["step"],
      "params": trainer.num_params,
      "train_s": round(train_s, 1),
      "probe_s": round(probe_s, 1),
      "workdir": workdir,
      "pngs": sorted(f for f in os.listdir(workdir) if f.endswith(".png")),
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
