"""Benchmarks run end to end at smoke size (their figures come from full runs; see the
scripts' docstrings). The GPU benchmark must at least run on CPU."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def run_bench(script, *args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
  result = subprocess.run([sys.executable, os.path.join(REPO, "experiments/bench", script),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_gpu_gpt2_smoke_reports_throughput_and_mfu():
  result = run_bench("gpu_gpt2.py", "--smoke")
  assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1
  assert result["context"] == 64 and result["attention"] == "xla"


def test_decode_smoke_compares_cached_recompute_and_hf():
  result = run_bench("decode.py", "--new_tokens", "24", "--layers", "1", "--width", "32",
                     "--heads", "2", "--vocab", "64", "--context", "64", "--repeats", "1")
  assert {"cached_tok_per_s", "recompute_tok_per_s", "hf_tok_per_s"} <= set(result)
  # Same weights, greedy: the three decoders agree on every token at this size.
  assert result["agreement_recompute"] == 1.0 and result["agreement_hf"] == 1.0


def test_igpt_digits_smoke_reports_bits_per_dim_and_probes(tmp_path):
  tiny = ["model.num_layers=1", "model.d_model=16", "model.num_heads=2", "sample.num_samples=2",
          "train.progress_bar=False", "eval.every=0"]
  result = run_bench("igpt_digits.py", "--steps", "4", "--seeds", "2",
                     "--workdir", str(tmp_path), *[f"--set={s}" for s in tiny])
  assert result["unigram_bits_per_dim"] == pytest.approx(2.98, abs=0.01)
  assert result["baseline_bits_per_dim"] < result["unigram_bits_per_dim"]
  assert 0 < result["test_bits_per_dim"] < 5
  assert set(result["probe_fewshot"]) == set(result["raw_pixel_fewshot"]) == {"1", "5", "10"}
  assert len(result["probe_by_layer"]) == 1
  assert {"probe_by_layer.png", "completions_step4.png", "samples_step4.png"} <= set(
      result["pngs"])


def test_mae_digits_smoke_reports_mse_baselines_probes_and_speedup(tmp_path):
  tiny = ["model.num_layers=1", "model.d_model=16", "model.num_heads=2",
          "model.decoder_d_model=8", "model.decoder_heads=2", "sample.num_samples=2",
          "train.progress_bar=False", "eval.every=0"]
  # The trained config's own decoder depth (2): the visible-only timing then compiles nothing
  # new (the session's compilation cache, tests/conftest.py).
  result = run_bench("mae_digits.py", "--steps", "3", "--seeds", "2", "--timed_steps", "2",
                     "--decoder_depths", "2", "--workdir", str(tmp_path),
                     *[f"--set={s}" for s in tiny])
  assert result["mean_image_mse"] < result["mean_patch_mse"]
  assert set(result["probe_fewshot"]) == {"mae", "raw_pixels", "random_encoder"}
  assert set(result["probe_fewshot"]["mae"]) == {"1", "5", "10"}
  # The speed-up is a benchmark figure (timing, not asserted here); both steps were timed.
  times = result["step_ms"]["decoder_depth_2"]
  assert times["visible_only"] > 0 and times["with_mask_tokens"] > 0
  assert result["speedup_visible_only"]["decoder_depth_2"] == pytest.approx(
      times["with_mask_tokens"] / times["visible_only"], rel=0.02)
  assert "reconstructions_step3.png" in result["pngs"]


def test_step_options_times_each_variant_against_the_first(tmp_path):
  text = tmp_path / "text.txt"
  text.write_text("To be, or not to be, that is the question.\n" * 500, encoding="utf-8")
  result = run_bench("step_options.py", "--data", str(text), "--rounds", "2", "--variants",
                     json.dumps({"base": {}, "ftz": {"xla_cpu_ftz": True}}))
  assert result["config"] == "tiny" and set(result["variants"]) == {"base", "ftz"}
  assert result["variants"]["base"]["ratio"] == 1.0
  assert 0 < result["variants"]["ftz"]["min_ms"] <= result["variants"]["ftz"]["median_ms"]


def test_torch_reference_pauses_for_its_turns(tmp_path):
  text = tmp_path / "text.txt"
  text.write_text("To be, or not to be, that is the question.\n" * 200, encoding="utf-8")
  # 12 iterations, 5 untimed: paused before the first timed one and after timed 3 and 6.
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments/bench/reference/torch_gpt.py"),
       "--data", str(text), "--config", "tiny", "--max-iters", "12", "--interleave", "3",
       "--peak-flops", "1e11"],
      input="go\n" * 3, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(l) for l in result.stdout.splitlines() if l.startswith("{")]
  chunks = [line["chunk_s"] for line in lines if "chunk_s" in line]
  assert chunks[0] is None and len(chunks) == 3 and all(c > 0 for c in chunks[1:])
  assert lines[-1]["timed_iters"] == 7 and lines[-1]["val_loss"] > 0
