"""The command line: train -> eval -> sample on a workdir, and one-line errors."""

import json
import os

import pytest

from conftest import REPO, run_main


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  result = run_main(workdir, train__steps=6, eval__every=3)
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir, result


def test_train_writes_config_metrics_curve_tensorboard_and_samples(trained_workdir):
  workdir, result = trained_workdir
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  assert config["train"]["steps"] == 6
  assert config["model"]["vocab_size"] > 50  # resolved from the tokenizer
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
  assert "val_loss" in records[2] and "val_loss" in records[5]
  assert all(0 < r["mfu"] < 1 and r["tokens_per_s"] > 0 for r in records)
  assert os.path.getsize(os.path.join(workdir, "loss.png")) > 1000
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert os.path.exists(os.path.join(workdir, "tokenizer.json"))
  assert "--- sample 0 ---" in result.stdout
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["step"] == 6 and summary["val_loss"] > 0


def test_eval_and_sample_modes_use_the_latest_checkpoint(trained_workdir):
  workdir, _ = trained_workdir
  evaluated = run_main(workdir, "--mode=eval", train__steps=6)
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  assert json.loads(evaluated.stdout.strip().splitlines()[-1])["step"] == 6
  sampled = run_main(workdir, "--mode=sample", train__steps=6, sample__prompt="The ",
                     sample__max_new_tokens=8)
  assert sampled.returncode == 0, sampled.stderr[-2000:]
  assert "--- sample 0 ---\nThe " in sampled.stdout


def test_a_runs_recorded_config_samples_it_without_repeating_its_overrides(trained_workdir):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  workdir, _ = trained_workdir
  command = lambda spec: [sys.executable, "-m", "genvis.main", f"--config={spec}",
                          f"--workdir={workdir}", "--mode=sample", "--config.sample.prompt=The ",
                          "--config.sample.max_new_tokens=8"]
  sampled = subprocess.run(command(f"configs/workdir.py:{workdir}"), cwd=REPO,
                           capture_output=True, text=True, timeout=300, check=False)
  assert sampled.returncode == 0, sampled.stderr[-2000:]
  assert "--- sample 0 ---\nThe " in sampled.stdout
  assert json.loads(sampled.stdout.strip().splitlines()[-1])["step"] == 6
  # The check can fail: the config file alone differs from the run's (its batch, its model).
  plain = subprocess.run(command("configs/gpt_lm.py:size=tiny"), cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=False)
  assert plain.returncode == 2 and plain.stderr.startswith("error: ")


def test_eval_mode_evaluates_the_ema_as_training_did(tmp_path):
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  from genvis import main  # pylint: disable=import-outside-toplevel
  from genvis.train.trainer import Trainer  # pylint: disable=import-outside-toplevel
  config = lambda: tiny_config(train__steps=4, train__ema_decay=0.5, eval__every=4,
                               sample__num_samples=0)
  trained = Trainer(config(), str(tmp_path)).train()
  evaluated = main.run(config(), str(tmp_path), "eval")
  assert evaluated["step"] == 4
  assert evaluated["val_loss"] == pytest.approx(trained["val_loss"], rel=1e-6)


def test_sample_mode_takes_prompts_of_different_lengths_from_a_file(trained_workdir, tmp_path):
  workdir, _ = trained_workdir
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("The \n\nif a:\\n b\n", encoding="utf-8")
  sampled = run_main(workdir, "--mode=sample", train__steps=6, sample__num_samples=2,
                     sample__prompt_file=str(prompts), sample__max_new_tokens=6,
                     sample__top_p=0.9, sample__top_k=5, sample__stop="e")
  assert sampled.returncode == 0, sampled.stderr[-2000:]
  samples = sampled.stdout.split("--- sample ")[1:]
  assert len(samples) == 4  # two prompts (the blank line skipped), two samples each
  bodies = [s.split("---\n", 1)[1].rsplit("\n{", 1)[0].rstrip("\n") for s in samples]
  assert bodies[0].startswith("The ") and bodies[2].startswith("if a:\n b")
  for body, prompt in zip(bodies, ["The ", "The ", "if a:\n b", "if a:\n b"]):
    assert "e" not in body[len(prompt):]  # cut at the stop string
    assert len(body) <= len(prompt) + 6


def one_line_error(result) -> str:
  assert result.returncode == 2, (result.stdout[-500:], result.stderr[-2000:])
  lines = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  return lines[0]


def test_unknown_config_key_is_named(tmp_path):
  line = one_line_error(run_main(str(tmp_path), "--config.train.stepz=3"))
  assert "unknown config key 'train.stepz'" in line
  assert "did you mean 'steps'" in line


def test_missing_data_file_is_named(tmp_path):
  line = one_line_error(run_main(str(tmp_path), spec="configs/gpt_lm.py:size=tiny,data=file",
                                 data__path="/no/such/corpus.txt"))
  assert "config.data.path='/no/such/corpus.txt': no such file" in line


def test_prompt_longer_than_the_context_is_named(trained_workdir):
  workdir, _ = trained_workdir
  line = one_line_error(run_main(workdir, "--mode=sample", train__steps=6,
                                 sample__prompt="x" * 40))
  assert "config.sample.prompt: " in line
  assert "longer than the model's context (model.max_len=16)" in line


def test_checkpoint_from_a_different_model_is_named(trained_workdir):
  workdir, _ = trained_workdir
  line = one_line_error(run_main(workdir, "--mode=eval", train__steps=6, model__d_model=64))
  assert "different model: model.d_model=32 in the checkpoint, 64 now" in line
