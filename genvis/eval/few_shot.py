"""Zero-, one- and few-shot evaluation of a trained language model (GPT-3 §2-3, at small scale).

  python -m genvis.eval.few_shot --workdir=runs/icl \
      --tasks=builtin:copy,builtin:reverse,file:my_task.jsonl --shots=0,1,2,4,8

Loads the run's config and newest parameters (genvis/train/pretrained.py), evaluates every
task at every k (free-form tasks by greedy exact match, multiple-choice tasks by the
likelihood of each choice), prints a task x k accuracy table, and writes
workdir/few_shot.json and workdir/few_shot.png (accuracy against k). A k whose prompts do not
fit the context the model was trained on (config.data.seq_len, at most model.max_len), or
needs more demonstrations than a file holds, is skipped and says so. Single process: the
model is small enough to score on one host.
"""

import json
import logging
import os
import sys

from absl import app, flags
import numpy as np

from genvis.errors import UserError
from genvis.eval import few_shot_tasks, prompts as prompts_lib, scoring

DEFAULT_TASKS = ",".join(f"builtin:{name}" for name in few_shot_tasks.BUILTIN_TASKS)
NUM_LOGGED_EXAMPLES = 3  # per task and k, written to few_shot.json for a look at the outputs


def _encode(tokenizer, text: str, task_name: str):
  try:
    return tokenizer.encode(text)
  except UserError as e:
    raise UserError(f"task {task_name!r}: {e}") from None


def evaluate_task(model, params, tokenizer, task, shots, *, max_len: int, seed: int = 0,
                  fmt=prompts_lib.PromptFormat(), normalize: str = "none",
                  batch_size: int = 32, context: str = "") -> dict:
  """Accuracy of `task` at every k in `shots`, with a few logged predictions. Prompts and
  completions must fit `max_len` tokens, the context the model was trained on; `context`
  names what sets it (default "model.max_len=<max_len>")."""
  context = context or f"model.max_len={max_len}"
  multiple_choice = task.multiple_choice
  result = {"scoring": "multiple_choice" if multiple_choice else "exact_match",
            "num_examples": len(task.queries), "accuracy": {}, "skipped": {}, "examples": []}
  completions = [scoring.fed_completion(tokenizer, c, fmt.answer_prefix, fmt.example_sep)
                 for q in task.queries for c in (q.choices or (q.answer,))]
  longest_completion = max(len(_encode(tokenizer, c, task.name)) for c in completions)
  available = prompts_lib.max_shots(task)
  for k in shots:
    if k > available:
      result["skipped"][str(k)] = f"only {available} demonstrations besides each query"
      continue
    prompts = prompts_lib.few_shot_prompts(task, k, seed, fmt)
    fed = [scoring.fed_prompt(tokenizer, p, fmt.answer_prefix) for p in prompts]
    longest_prompt = max(len(_encode(tokenizer, p, task.name)) for p in fed)
    # Both feed the prompt and the completion minus its last token (scored or generated,
    # never an input).
    needed = longest_prompt + longest_completion - 1
    if needed > max_len:
      result["skipped"][str(k)] = f"prompts need {needed} tokens > {max_len} ({context})"
      continue
    common = dict(delimiter=fmt.example_sep, answer_prefix=fmt.answer_prefix, max_len=max_len,
                  batch_size=batch_size)
    if multiple_choice:
      predicted = scoring.multiple_choice_predictions(
          model, params, tokenizer, prompts, [q.choices for q in task.queries],
          normalize=normalize, **common)
      correct = [p == q.correct for p, q in zip(predicted, task.queries)]
      predicted = [q.choices[p] for p, q in zip(predicted, task.queries)]
    else:
      predicted = scoring.exact_match_predictions(
          model, params, tokenizer, prompts, [q.answer for q in task.queries], **common)
      correct = [p == q.answer.strip() for p, q in zip(predicted, task.queries)]
    result["accuracy"][str(k)] = float(np.mean(correct))
    # The prompt as fed: a character tokenizer's ends in the separator's space.
    result["examples"] += [{"k": k, "prompt": fed[i],
                            "prediction": predicted[i], "answer": task.queries[i].answer}
                           for i in range(min(NUM_LOGGED_EXAMPLES, len(prompts)))]
  return result


def mean_accuracy(task_results: dict, shots) -> dict:
  """Mean over all tasks at each k; a k that some task skipped has none (a mean over a
  different set of tasks would not be comparable along the curve)."""
  means = {}
  for k in map(str, shots):
    if all(k in r["accuracy"] for r in task_results.values()):
      means[k] = float(np.mean([r["accuracy"][k] for r in task_results.values()]))
  return means


def format_table(results: dict) -> str:
  shots = [str(k) for k in results["shots"]]
  header = f"{'task':<16}{'scoring':<17}" + "".join(f"{'k=' + k:>8}" for k in shots)
  lines = [header, "-" * len(header)]
  cell = lambda accuracy, k: f"{100 * accuracy[k]:>8.1f}" if k in accuracy else f"{'-':>8}"
  for name, r in results["tasks"].items():
    lines.append(f"{name:<16}{r['scoring'].replace('_', ' '):<17}"
                 + "".join(cell(r["accuracy"], k) for k in shots))
  lines.append(f"{'mean':<33}" + "".join(cell(results["mean_accuracy"], k) for k in shots))
  return "\n".join(lines) + "\n(accuracy in %; '-': skipped, see below)"


def plot_accuracy(results: dict, path: str):
  """Accuracy against k: one thin line per task, the mean in bold (GPT-3 Fig. 1.2 style)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  series = [(name, r["accuracy"], {"linewidth": 1.2}) for name, r in results["tasks"].items()]
  series.append(("mean", results["mean_accuracy"], {"linewidth": 3.0, "color": "black"}))
  for name, accuracy, style in series:
    ks = sorted(int(k) for k in accuracy)
    ax.plot(ks, [100 * accuracy[str(k)] for k in ks], marker="o", label=name, **style)
  ax.set_xscale("symlog", linthresh=1)  # k = 0 stays on the axis
  ax.set_xticks(results["shots"], [str(k) for k in results["shots"]])
  ax.set_xlabel("number of examples in context (k)")
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(-2, 102)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  run = os.path.basename(os.path.normpath(results["workdir"]))
  prompt_kind = "" if results["include_description"] else ", no description"
  ax.set_title(f"in-context learning, {run} (step {results['step']}{prompt_kind})")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def run_few_shot(workdir: str, task_specs: list[str], shots: list[int], *,
                 num_examples: int = 0, seed: int = 0, normalize: str = "none",
                 include_description: bool = True, batch_size: int = 32,
                 output: str = "few_shot", devices=None) -> dict:
  """Evaluate the run in `workdir`; writes workdir/{output}.json and .png, returns results.

  `devices` restricts the mesh the parameters are restored onto (default: all devices).
  """
  from genvis.train.pretrained import load_trained, read_config  # pylint: disable=import-outside-toplevel
  if not shots or min(shots) < 0:
    raise UserError(f"--shots={shots}: expected non-negative integers")
  if normalize not in scoring.NORMALIZATIONS:
    raise UserError(f"--normalize={normalize!r}: expected one of "
                    f"{', '.join(scoring.NORMALIZATIONS)}")
  tasks = [few_shot_tasks.load_task(spec, num_examples) for spec in task_specs]
  names = [t.name for t in tasks]
  if len(set(names)) != len(names):
    raise UserError(f"--tasks: two tasks share a name ({', '.join(names)})")
  task_name = read_config(workdir).task
  if task_name != "lm":
    raise UserError(f"{workdir}: few-shot evaluation needs a language-model run "
                    f"(config.task='lm', not {task_name!r})")
  trainer, params = load_trained(workdir, devices=devices)
  fmt = prompts_lib.PromptFormat(include_description=include_description)
  results = {"workdir": workdir, "step": trainer.restored_step, "shots": list(shots),
             "seed": seed, "normalize": normalize, "include_description": include_description,
             "tasks": {}}
  with trainer.sharding_context():
    for task in tasks:
      results["tasks"][task.name] = evaluate_task(
          trainer.task.model, params, trainer.task.tokenizer, task, shots,
          max_len=trainer.task.seq_len, context=trainer.task.context_name, seed=seed, fmt=fmt,
          normalize=normalize, batch_size=batch_size)
  results["mean_accuracy"] = mean_accuracy(results["tasks"], shots)
  with open(os.path.join(workdir, f"{output}.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  plot_accuracy(results, os.path.join(workdir, f"{output}.png"))
  return results


def define_flags():
  """The command-line flags (defined only when run as a program, so importing this module
  next to genvis.main does not define --workdir twice)."""
  flags.DEFINE_string("workdir", None, "Workdir of a trained language-model run.")
  flags.DEFINE_list("tasks", DEFAULT_TASKS,
                    "builtin:NAME[@SEED] or file:PATH.jsonl, comma-separated.")
  flags.DEFINE_list("shots", "0,1,2,4,8", "Numbers of demonstrations k.")
  flags.DEFINE_integer("num_examples", 0, "Queries per task (0: all of a file, 100 built-in).")
  flags.DEFINE_integer("seed", 0, "Seed of the demonstration draws.")
  flags.DEFINE_enum("normalize", "none", list(scoring.NORMALIZATIONS),
                    "Multiple choice: summed log-likelihood, or per token / per character.")
  flags.DEFINE_bool("description", True, "Start prompts with the task description.")
  flags.DEFINE_integer("batch_size", 32, "Rows per compiled forward pass.")
  flags.DEFINE_string("output", "few_shot", "Base name of the .json and .png in the workdir.")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  for noisy in ("absl", "jax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    shots = [int(k) for k in flags.FLAGS.shots]
  except ValueError:
    print(f"error: --shots={','.join(flags.FLAGS.shots)}: expected integers", file=sys.stderr)
    sys.exit(2)
  try:
    results = run_few_shot(
        flags.FLAGS.workdir, flags.FLAGS.tasks, shots, num_examples=flags.FLAGS.num_examples,
        seed=flags.FLAGS.seed, normalize=flags.FLAGS.normalize,
        include_description=flags.FLAGS.description, batch_size=flags.FLAGS.batch_size,
        output=flags.FLAGS.output)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_table(results))
  for name, task_result in results["tasks"].items():
    for k, reason in task_result["skipped"].items():
      print(f"{name}, k={k} skipped: {reason}")
  print(f"wrote {os.path.join(flags.FLAGS.workdir, flags.FLAGS.output)}.json and .png")


if __name__ == "__main__":
  define_flags()
  app.run(main)
