"""Shared test set-up: 8 simulated CPU devices (set before JAX starts) and tiny configs."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the session: many modules, and the runs that tests start
# in subprocesses, compile the same tiny configs, and XLA:CPU takes seconds a compile (a tiny
# GPT's train step 3 s). The xdist workers and every subprocess inherit the variable from the
# process that loads this file first. The size limit is there for its file lock (the filelock
# package): without one, a process could read an entry another is still writing.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix="genvis_tests_jax_cache_")
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ.update({"JAX_COMPILATION_CACHE_DIR": _cache_dir,
                     "JAX_COMPILATION_CACHE_MAX_SIZE": str(4 << 30),
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2"})

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A GPT small enough to compile in seconds, on the embedded corpus.
TINY_OVERRIDES = {
    "model.num_layers": 2,
    "model.d_model": 32,
    "model.num_heads": 4,
    "model.max_len": 16,
    "data.batch_size": 8,
    "train.steps": 5,
    "train.log_every": 1,
    "train.progress_bar": False,
    "optim.warmup_steps": 2,
    "eval.every": 0,
    "eval.num_batches": 2,
    "checkpoint.every": 1000,
    "sample.num_samples": 1,
    "sample.max_new_tokens": 4,
}


# A 3-step run of batch 16 that logs every step, evaluates and checkpoints only at the end
# (the task tests' short runs; each adds its tiny model).
SHORT_RUN_OVERRIDES = {
    "data.batch_size": 16,
    "train.steps": 3,
    "train.log_every": 1,
    "train.progress_bar": False,
    "optim.warmup_steps": 1,
    "eval.every": 0,
    "checkpoint.every": 1000,
}


def load_test_config(spec: str, base: dict, **overrides):
  """configs/<spec> ("file.py:variant") with the `base` overrides, then the keyword ones
  (which use '__' for '.')."""
  from genvis import config_lib  # pylint: disable=import-outside-toplevel
  extra = {k.replace("__", "."): v for k, v in overrides.items()}
  return config_lib.load_config(os.path.join(REPO, "configs", spec), {**base, **extra})


def tiny_config(**overrides):
  """configs/gpt_lm.py with a tiny model; keyword overrides use '__' for '.'."""
  return load_test_config("gpt_lm.py:size=tiny", TINY_OVERRIDES, **overrides)


def assert_one_line_error(excinfo, *fragments):
  """A pytest.raises result whose message is one line holding every fragment."""
  message = str(excinfo.value)
  assert "\n" not in message, message
  for fragment in fragments:
    assert fragment in message, message


def cli_overrides(**overrides) -> list[str]:
  """The tiny config as `--config.key=value` flags for `python -m genvis.main`."""
  merged = {**TINY_OVERRIDES, **{k.replace("__", "."): v for k, v in overrides.items()}}
  return [f"--config.{k}={v}" for k, v in merged.items()]


def main_command(workdir, *flags, spec="configs/gpt_lm.py:size=tiny", **overrides) -> list[str]:
  """argv for `python -m genvis.main` on the tiny config."""
  import sys  # pylint: disable=import-outside-toplevel
  return [sys.executable, "-m", "genvis.main", f"--config={os.path.join(REPO, spec)}",
          f"--workdir={workdir}", *cli_overrides(**overrides), *flags]


def run_main(workdir, *flags, timeout=300, env=None, **overrides):
  """Run genvis.main in a subprocess; returns the CompletedProcess (text output)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  return subprocess.run(main_command(workdir, *flags, **overrides), cwd=REPO, timeout=timeout,
                        capture_output=True, text=True, env=env, check=False)


def short_run(tmp_path_factory, config, name: str):
  """(workdir, summary, trainer) of a run of `config` in a fresh workdir named after `name`."""
  from genvis.train.trainer import Trainer  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp(name))
  trainer = Trainer(config, workdir)
  return workdir, trainer.train(), trainer


@pytest.fixture(scope="module", name="task")
def fixture_task(run):
  """The task of the test module's `run` fixture (a short_run)."""
  return run[2].task


@pytest.fixture(scope="module", name="params")
def fixture_params(run):
  """The latest checkpoint's parameters of the test module's `run` fixture (a short_run)."""
  return run[2].restore_latest().params
