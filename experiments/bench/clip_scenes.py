"""CLIP on the procedural scenes (or digits): zero-shot transfer and retrieval; SigLIP beside it.

  python experiments/bench/clip_scenes.py                   # CLIP on scenes
  python experiments/bench/clip_scenes.py --loss both       # + SigLIP at the same budget
  python experiments/bench/clip_scenes.py --data digits     # digits captions, + probes

1. Trains `configs/clip.py:data=<data>,loss=<loss>` with the generic trainer (each run writes
   its loss.png), whose final evaluation runs the task's evaluators on the test split:
   zero-shot accuracy with and without prompt ensembling, and retrieval recall@k.
2. Scenes: zero-shot accuracy for the object's shape and colour on the test split (prompts
   naming the attribute alone, and the attribute read off the predicted colour–shape pair),
   and for the held-out colour–shape pairs (never in a training caption) on the "heldout"
   split, each with its chance levels (majority class; uniform 1/C); retrieval R@1/5 on the
   test split (identical captions count as one text).
   Digits: zero-shot accuracy of the digit prompts, and the few-shot linear probe
   (genvis.eval.probe; 1/5/10 labels per class, mean ± std over seeds) of the CLIP image
   embeddings against raw pixels.
3. With --loss both: CLIP and SigLIP trained for the same steps on the same batches, their
   figures side by side and clip_vs_siglip.png (training loss and in-batch accuracy per step).

The last line printed is one JSON object with zeroshot_shape, zeroshot_color and
zeroshot_heldout (each {accuracy, chance_majority, chance_uniform}), recall_at_1 and
recall_at_5 (image→text and text→image), the same without ensembling, and per loss when
several were trained.
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
from genvis import config_lib
from genvis.eval import probe
from genvis.train.metric_writers import read_metrics
from genvis.train.pretrained import load_trained
from genvis.train.trainer import Trainer

SHOTS = (1, 5, 10)


def zero_shot_figures(summary: dict, mode: str, data: str) -> dict:
  """{name: {accuracy, chance_majority, chance_uniform}} from a run's final evaluation."""
  prefix = f"val_zeroshot/{mode}/"
  names = ({"shape": "shape", "color": "colour", "heldout": "heldout_split/heldout_combo",
            "heldout_shape": "heldout_split/shape", "heldout_color": "heldout_split/colour",
            "pair": "combo"} if data == "scenes" else {"digit": ""})
  figures = {}
  for name, key in names.items():
    key = f"{prefix}{key}/" if key else prefix
    figures[name] = {field: round(summary[key + field], 4)
                     for field in ("accuracy", "chance_majority", "chance_uniform")}
  if data == "scenes":  # the attribute read off the predicted colour-shape pair
    for name, attribute in (("shape", "shape"), ("color", "colour")):
      figures[f"{name}_via_pair"] = {
          **figures[name], "accuracy": round(summary[f"{prefix}{attribute}_via_combo/accuracy"], 4)}
  return figures


def retrieval_figures(summary: dict) -> dict:
  return {f"recall_at_{k}": {direction: round(summary[f"val_retrieval/{direction}/R@{k}"], 4)
                             for direction in ("image_to_text", "text_to_image")}
          for k in (1, 5, 10)}


def digits_probes(workdir: str, seeds: int) -> dict:
  """Few-shot and full-label probes of the CLIP image embeddings vs raw pixels."""
  trainer, params = load_trained(workdir)
  task = trainer.task
  train_set, test_set = task.train_set, task.test_set
  flat = lambda images: images.reshape(len(images), -1)
  feature_sets = {
      "clip": (task.encode_images(params, train_set.images),
               task.encode_images(params, test_set.images)),
      "raw_pixels": (flat(train_set.images), flat(test_set.images)),
  }
  probes = {}
  for name, (train_x, test_x) in feature_sets.items():
    result = probe.probe_features(train_x, train_set.labels, test_x, test_set.labels,
                                  shots=SHOTS, seeds=seeds)
    probes[name] = {"full": round(result["full"], 4),
                    "fewshot": {str(k): round(v["mean"], 4)
                                for k, v in result["few_shot"].items()},
                    "fewshot_std": {str(k): round(v["std"], 4)
                                    for k, v in result["few_shot"].items()}}
  return probes


def plot_comparison(workdirs: dict, path: str):
  """Training loss and in-batch accuracy per step of each run, side by side."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (loss_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
  for loss, workdir in workdirs.items():
    records = [r for r in read_metrics(workdir) if "loss" in r]
    steps = [r["step"] for r in records]
    loss_ax.plot(steps, [r["loss"] for r in records], label=loss)
    accuracy_ax.plot(steps, [r["accuracy"] for r in records], label=loss)
  loss_ax.set(xlabel="step", ylabel="training loss (each its own)", yscale="log")
  accuracy_ax.set(xlabel="step", ylabel="in-batch image→caption accuracy")
  for ax in (loss_ax, accuracy_ax):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default="scenes", choices=("scenes", "digits"))
  parser.add_argument("--loss", default="clip", choices=("clip", "siglip", "both"))
  parser.add_argument("--steps", type=int, default=0, help="0: the config's train.steps")
  parser.add_argument("--workdir", default="", help="default: a new temporary directory")
  parser.add_argument("--seeds", type=int, default=10, help="few-shot draws per shot count")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override, e.g. data.batch_size=64")
  args = parser.parse_args()
  root = args.workdir or tempfile.mkdtemp(prefix=f"clip_{args.data}_")
  losses = ("clip", "siglip") if args.loss == "both" else (args.loss,)
  overrides = {"train.progress_bar": False, **config_lib.parse_overrides(args.set)}
  if args.steps:
    overrides["train.steps"] = args.steps

  runs, workdirs = {}, {}
  for loss in losses:
    workdir = workdirs[loss] = os.path.join(root, loss)
    spec = os.path.join(REPO, f"configs/clip.py:data={args.data},loss={loss}")
    start = time.perf_counter()
    summary = Trainer(config_lib.load_config(spec, overrides), workdir).train()
    run = {"train_s": round(time.perf_counter() - start, 1), "steps": summary["step"],
           "val_loss": round(summary["val_loss"], 4)}
    for mode in ("ensemble", "single"):
      figures = zero_shot_figures(summary, mode, args.data)
      run.update({f"zeroshot_{k}" + ("" if mode == "ensemble" else "_no_ensemble"): v
                  for k, v in figures.items()})
    run.update(retrieval_figures(summary))
    if args.data == "digits":
      run["probes"] = digits_probes(workdir, args.seeds)
    runs[loss] = run
    print(f"{loss}: " + json.dumps(run), flush=True)
  if len(losses) > 1:
    plot_comparison(workdirs, os.path.join(root, "clip_vs_siglip.png"))

  result = {"data": args.data, **runs[losses[0]], "loss": losses[0], "workdir": root}
  if len(losses) > 1:
    result["by_loss"] = runs
  print(json.dumps(result))


if __name__ == "__main__":
  main()
