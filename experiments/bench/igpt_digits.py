"""ImageGPT on the embedded digits: train, bits/dim against count baselines, linear probes.

  python experiments/bench/igpt_digits.py [--steps N] [--workdir DIR] [--set KEY=VALUE ...]
  python experiments/bench/igpt_digits.py --data scenes   # the same on 16x16 scenes

With --data scenes the model is `configs/igpt.py:data=scenes` (16-colour k-means palette,
bits/dim per RGB dimension) and the probes classify the first object's shape. A --workdir
holding a finished run of the same config is evaluated without training again.

1. Trains `configs/igpt.py:data=digits` (8x8 digits, their 17 native grey levels as tokens,
   raster order after a start token) with the generic trainer, which also writes
   samples_step<N>.png and completions_step<N>.png (original | top half | 4 completions).
2. Test bits/dim of the model against a unigram and a per-pixel categorical model fitted on
   the training tokens (`genvis.eval.bits_per_dim`).
3. Linear probes (`genvis.eval.probe`) on every layer's average-pooled hidden states:
   full-label accuracy and few-shot accuracy at 1, 5 and 10 labels per class (10 seeds,
   mean ± std), the same for raw pixels; probe_by_layer.png plots them. The "best layer" is
   chosen on a quarter of the training images (10-shot), never on the test set.

The last line printed is one JSON object with test_bits_per_dim, baseline_bits_per_dim
(per-pixel categorical), unigram_bits_per_dim, probe_by_layer, best_layer, probe_fewshot
(the best layer's few-shot accuracy by labels per class), raw_pixel_fewshot, raw_pixel_full.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from genvis import config_lib
from genvis.eval import bits_per_dim, probe
from genvis.train.pretrained import load_trained
from genvis.train.trainer import Trainer

SHOTS = (1, 5, 10)


def select_layer(train_x, train_y, seeds) -> int:
  """The layer with the best 10-shot accuracy on a quarter of the *training* images, probes
  fitted on the other three quarters: the layer is chosen without looking at the test set."""
  order = np.random.default_rng(0).permutation(len(train_y))
  held, fit = order[:len(order) // 4], order[len(order) // 4:]
  results = probe.probe_by_layer(train_x[:, fit], train_y[fit], train_x[:, held],
                                 train_y[held], shots=(10,), seeds=seeds, full_label=False)
  return probe.best_layer(results, 10)


def curve(workdir: str) -> list:
  """(step, test bits/dim) at every evaluation of the run."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return [(r["step"], round(r["val_bits_per_dim"], 4)) for r in records
          if "val_bits_per_dim" in r]


def few_shot_means(entry: dict) -> dict:
  return {str(k): round(v["mean"], 4) for k, v in entry["few_shot"].items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default="digits", choices=("digits", "scenes"))
  parser.add_argument("--steps", type=int, default=0, help="0: the config's train.steps")
  parser.add_argument("--workdir", default="", help="default: a new temporary directory")
  parser.add_argument("--seeds", type=int, default=10, help="few-shot draws per shot count")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override, e.g. model.num_layers=4")
  args = parser.parse_args()

  overrides = {"mesh.shape": (1, 1, 1), **config_lib.parse_overrides(args.set)}
  if args.steps:
    overrides["train.steps"] = args.steps
  config = config_lib.load_config(os.path.join(REPO, f"configs/igpt.py:data={args.data}"),
                                  overrides)
  workdir = args.workdir or tempfile.mkdtemp(prefix=f"igpt_{args.data}_")
  start = time.perf_counter()
  summary = Trainer(config, workdir).train()
  train_s = time.perf_counter() - start

  trainer, params = load_trained(workdir)
  task = trainer.task
  baselines = bits_per_dim.categorical_baselines(
      task.tokens(task.train_set.images), task.test_tokens, task.num_colors,
      channels=task.image_shape[-1])

  start = time.perf_counter()
  train_x, test_x = (task.layer_features(params, split.images)
                     for split in (task.train_set, task.test_set))
  train_y, test_y = task.train_set.labels, task.test_set.labels
  by_layer = probe.probe_by_layer(train_x, train_y, test_x, test_y, shots=SHOTS,
                                  seeds=args.seeds)
  flat = lambda images: images.reshape(len(images), -1)
  raw = probe.probe_features(flat(task.train_set.images), train_y, flat(task.test_set.images),
                             test_y, shots=SHOTS, seeds=args.seeds)
  probe_s = time.perf_counter() - start
  best = select_layer(train_x, train_y, args.seeds)
  plot_path = os.path.join(workdir, "probe_by_layer.png")
  probe.plot_probe_by_layer(by_layer, plot_path, baseline=raw, baseline_name="raw pixels")
  print(probe.format_probe_results(by_layer, baseline=raw))

  layers = by_layer["layers"]
  result = {
      "data": args.data,
      "test_bits_per_dim": round(summary["val_bits_per_dim"], 4),
      "test_bits_per_pixel": round(summary["val_bits_per_pixel"], 4),
      "bits_per_dim_curve": curve(workdir),
      "baseline_bits_per_dim": round(baselines["per_pixel"]["bits_per_dim"], 4),
      "unigram_bits_per_dim": round(baselines["unigram"]["bits_per_dim"], 4),
      "palette_colors": task.num_colors,
      "probe_by_layer": [{"layer": i + 1, "full": round(entry["full"], 4),
                          "fewshot": few_shot_means(entry)} for i, entry in enumerate(layers)],
      "best_layer": best + 1,
      "probe_full": round(layers[best]["full"], 4),
      "probe_fewshot": few_shot_means(layers[best]),
      "probe_fewshot_std": {str(k): round(v["std"], 4)
                            for k, v in layers[best]["few_shot"].items()},
      "raw_pixel_full": round(raw["full"], 4),
      "raw_pixel_fewshot": few_shot_means(raw),
      "raw_pixel_fewshot_std": {str(k): round(v["std"], 4) for k, v in raw["few_shot"].items()},
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
