"""Preemption and crashes: a resumed run continues exactly as an uninterrupted one.

Batches are a function of (seed, step) and the state holds everything else, so N steps,
a kill, a resume and the remaining steps must give the same parameters as one straight run.
"""

import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from conftest import REPO, main_command, run_main, tiny_config
from genvis.train.trainer import Trainer

pytestmark = pytest.mark.slow
STEPS = 16
# Every step is checkpointed so that a kill at any moment leaves a recent checkpoint (and, often,
# a half-written one that must be ignored).
RUN = dict(train__steps=STEPS, checkpoint__every=1, checkpoint__keep=2, eval__num_batches=0,
           sample__num_samples=0)


def final_params(workdir):
  state = Trainer(tiny_config(**RUN), workdir).restore_latest()
  assert int(state.step) == STEPS
  return jax.tree.map(np.asarray, jax.device_get(state.params))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  result = run_main(workdir, **RUN)
  assert result.returncode == 0, result.stderr[-2000:]
  return final_params(workdir)


def start_and_signal(workdir, sig):
  """Start a run, send `sig` once its first checkpoint exists, and wait for the process."""
  process = subprocess.Popen(main_command(workdir, **RUN), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  checkpoints = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None:
    if os.path.isdir(checkpoints) and any(p.isdigit() for p in os.listdir(checkpoints)):
      break
    time.sleep(0.05)
  process.send_signal(sig)
  stdout, stderr = process.communicate(timeout=240)
  return process.returncode, stdout, stderr


def assert_same_params(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_killed_then_resumed_equals_uninterrupted(uninterrupted, tmp_path):
  workdir = str(tmp_path)
  returncode, _, stderr = start_and_signal(workdir, signal.SIGKILL)
  assert returncode == -signal.SIGKILL, f"the run was not killed mid-way: {stderr[-1000:]}"
  steps_done = [int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit()]
  assert max(steps_done) < STEPS
  resumed = run_main(workdir, **RUN)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from checkpoint step" in resumed.stderr
  assert_same_params(final_params(workdir), uninterrupted)


def test_sigterm_saves_exits_cleanly_and_resumes_identically(uninterrupted, tmp_path):
  workdir = str(tmp_path)
  returncode, stdout, stderr = start_and_signal(workdir, signal.SIGTERM)
  assert returncode == 0, stderr[-2000:]
  assert '"preempted": true' in stdout
  saved = max(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())
  assert saved < STEPS
  resumed = run_main(workdir, **RUN)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resumed from checkpoint step {saved}" in resumed.stderr
  assert_same_params(final_params(workdir), uninterrupted)
