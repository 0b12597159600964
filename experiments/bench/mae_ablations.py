"""MAE ablations in the paper's style (He et al. 2021, table 1): fine-tune and linear-probe
accuracy per pre-training setting, at CPU scale.

  python experiments/bench/mae_ablations.py [--data digits|scenes] [--workdir DIR]
      [--pretrain_steps 1000] [--finetune_steps 300] [--tables mask_ratio,decoder_depth,...]

Tables (each row changes one setting of configs/mae.py's size=cpu default: mask ratio 0.75,
decoder 2 blocks x 64 wide, encoder on the visible patches only):
  mask_ratio     0.25 / 0.5 / 0.75 / 0.9
  decoder_depth  1 / 2 / 4 / 8 blocks
  decoder_width  64 / 128 / 256
  wallclock      the encoder w/ [M] (mask tokens for every patch) or w/o (visible patches
                 only), with a decoder of 8 or 1 blocks, and the train-step speed-up over
                 "w/ [M], decoder 8" measured side by side (the paper's table 2)

For each setting: MAE pre-training for `--pretrain_steps`; "lin": a linear probe
(`genvis.eval.probe`, all training labels) on the encoder's mean-pooled patch tokens; "ft":
end-to-end fine-tuning of the encoder (configs/vit.py recipe=finetune, layer-wise lr decay
0.75) for `--finetune_steps`, test accuracy. A ViT of the same shape trained from scratch for
the same fine-tuning steps is the reference row. A setting shared by several tables (the
default) is pre-trained once. Runs go to WORKDIR/<setting>; a finished run is reused, so an
interrupted sweep resumes where it stopped.

Prints each table as Markdown and writes WORKDIR/ablations.md; the last line is one JSON
object with every row.
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
from mae_digits import step_seconds  # noqa: E402  (this folder is on sys.path)

from genvis import config_lib
from genvis.eval import probe
from genvis.tasks import classify
from genvis.train.pretrained import load_trained
from genvis.train.trainer import Trainer

DEFAULT = {"model.mask_ratio": 0.75, "model.decoder_layers": 2, "model.decoder_d_model": 64,
           "model.encoder_mask_tokens": False}


def _one_key(key: str, values) -> list[tuple[str, dict]]:
  return [(str(value), {key: value}) for value in values]


def _wallclock_rows() -> list[tuple[str, dict]]:
  """The paper's table 2: the encoder with or without mask tokens, decoder 8 or 1 blocks."""
  return [(f"{'w/' if tokens else 'w/o'} [M], decoder {depth}",
           {"model.encoder_mask_tokens": tokens, "model.decoder_layers": depth})
          for tokens, depth in ((True, 8), (False, 8), (True, 1), (False, 1))]


# table -> [(row label, the settings it changes from DEFAULT)]
TABLES = {
    "mask_ratio": _one_key("model.mask_ratio", (0.25, 0.5, 0.75, 0.9)),
    "decoder_depth": _one_key("model.decoder_layers", (1, 2, 4, 8)),
    "decoder_width": _one_key("model.decoder_d_model", (64, 128, 256)),
    "wallclock": _wallclock_rows(),
}
TIMED_TABLES = ("wallclock",)  # tables with a measured train-step speed-up column


def setting_name(settings: dict) -> str:
  short = {"model.mask_ratio": "mask", "model.decoder_layers": "depth",
           "model.decoder_d_model": "width", "model.encoder_mask_tokens": "mtok"}
  return "_".join(f"{short[k]}{int(v) if isinstance(v, bool) else v}"
                  for k, v in settings.items())


def run_once(spec: str, overrides: dict, workdir: str) -> dict:
  """The summary of a training run, trained now unless `workdir` holds a finished one."""
  done = os.path.join(workdir, "summary.json")
  if os.path.exists(done):
    with open(done, encoding="utf-8") as f:
      return json.load(f)
  start = time.perf_counter()
  summary = Trainer(config_lib.load_config(spec, overrides), workdir).train()
  if summary.get("preempted"):  # SIGTERM: the run saved and stopped; resume it next time
    sys.exit(f"stopped during {workdir}; run the same command again to resume")
  summary = {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}
  summary["seconds"] = round(time.perf_counter() - start, 1)
  with open(done, "w", encoding="utf-8") as f:
    json.dump(summary, f)
  return summary


def linear_probe(workdir: str) -> float:
  """Full-label linear probe accuracy of a finished MAE run's encoder features."""
  trainer, params = load_trained(workdir)
  task = trainer.task
  return probe.probe_accuracy(task.features(params, task.train_set.images),
                              task.train_set.labels,
                              task.features(params, task.test_set.images),
                              task.test_set.labels)


def finetune_overrides(steps: int) -> dict:
  return {"train.steps": steps, "optim.warmup_steps": max(steps // 20, 1), "eval.every": 0,
          "train.progress_bar": False, "checkpoint.every": 10 * steps}


def markdown_table(title: str, rows: list[dict], timed: bool) -> str:
  head = "| setting | ft | lin |" + (" speed-up |" if timed else "")
  rule = "|---|---|---|" + ("---|" if timed else "")
  lines = [f"**{title}**", "", head, rule]
  for row in rows:
    line = f"| {row['label']} | {100 * row['ft']:.1f} | {100 * row['lin']:.1f} |"
    if timed:
      line += f" {row['speedup']:.2f}x |"
    lines.append(line)
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default="digits", choices=("digits", "scenes"))
  parser.add_argument("--workdir", default="", help="default: a new temporary directory")
  parser.add_argument("--pretrain_steps", type=int, default=1000)
  parser.add_argument("--finetune_steps", type=int, default=300)
  parser.add_argument("--timed_steps", type=int, default=20)
  parser.add_argument("--tables", default=",".join(TABLES))
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a pre-training config override for every setting; encoder "
                           "fields (model.d_model, ...) also apply to the classifiers")
  args = parser.parse_args()
  tables = args.tables.split(",")
  unknown = sorted(set(tables) - set(TABLES))
  if unknown:
    parser.error(f"--tables: unknown {', '.join(unknown)}; expected {', '.join(TABLES)}")
  root = args.workdir or tempfile.mkdtemp(prefix=f"mae_ablations_{args.data}_")
  os.makedirs(root, exist_ok=True)
  mae_spec = os.path.join(REPO, f"configs/mae.py:data={args.data}")
  vit_spec = os.path.join(REPO, f"configs/vit.py:data={args.data},recipe=finetune")
  extra = config_lib.parse_overrides(args.set)
  pretrain = {"train.steps": args.pretrain_steps,
              "optim.warmup_steps": max(args.pretrain_steps // 20, 1),
              "train.progress_bar": False, "eval.every": 0, "sample.num_samples": 4, **extra}
  classifier = {**finetune_overrides(args.finetune_steps),
                **{k: v for k, v in extra.items()
                   if k.removeprefix("model.") in classify.ENCODER_FIELDS}}
  start = time.perf_counter()

  scratch = run_once(os.path.join(REPO, f"configs/vit.py:data={args.data}"),
                     classifier, os.path.join(root, "scratch"))
  print(f"from scratch, {args.finetune_steps} steps: {100 * scratch['val_accuracy']:.1f} %",
        flush=True)

  results = {}  # setting name -> row facts, shared by the tables

  def evaluate(settings: dict) -> dict:
    name = setting_name(settings)
    if name not in results:
      workdir = os.path.join(root, name)
      mae = run_once(mae_spec, {**pretrain, **settings}, workdir)
      finetuned = run_once(vit_spec, {**classifier, "init_from": workdir}, workdir + "_ft")
      results[name] = {"masked_mse": mae["val_loss"], "ft": finetuned["val_accuracy"],
                       "lin": linear_probe(workdir), "pretrain_s": mae["seconds"]}
      print(f"{name}: masked MSE {mae['val_loss']:.4f}, ft {100 * results[name]['ft']:.1f} %, "
            f"lin {100 * results[name]['lin']:.1f} %", flush=True)
    return results[name]

  markdown, json_tables = [], {}
  for table in tables:
    rows = []
    for label, changes in TABLES[table]:
      settings = {**DEFAULT, **changes}
      row = {"label": label, "settings": changes, **evaluate(settings)}
      if table in TIMED_TABLES:
        timing = {**pretrain, **settings, "mesh.shape": (1, 1, 1)}
        row["step_s"] = step_seconds(args.data, timing, args.timed_steps)
      rows.append(row)
    if table in TIMED_TABLES:  # speed-up over the first row
      for row in rows:
        row["speedup"] = rows[0]["step_s"] / row["step_s"]
    markdown.append(markdown_table(table.replace("_", " "), rows, timed=table in TIMED_TABLES))
    json_tables[table] = rows
    print(markdown[-1], flush=True)

  header = (f"MAE ablations on {args.data}: pre-training {args.pretrain_steps} steps, "
            f"fine-tuning {args.finetune_steps} steps; test accuracy (%). From scratch for the "
            f"same {args.finetune_steps} steps: {100 * scratch['val_accuracy']:.1f} %.")
  with open(os.path.join(root, "ablations.md"), "w", encoding="utf-8") as f:
    f.write("\n\n".join([header, *markdown]) + "\n")
  print(json.dumps({"data": args.data, "pretrain_steps": args.pretrain_steps,
                    "finetune_steps": args.finetune_steps,
                    "scratch_accuracy": scratch["val_accuracy"], "tables": json_tables,
                    "seconds": round(time.perf_counter() - start, 1), "workdir": root}))


if __name__ == "__main__":
  main()
