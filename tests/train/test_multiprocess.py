"""Two processes over loopback (jax.distributed + gloo) train exactly like one process.

Each process holds 4 of the 8 devices and materialises only its half of every global batch;
the trainer assembles the global arrays. Losses must match a one-process run on 8 devices.
"""

import json
import os
import socket
import subprocess

import numpy as np
import pytest

from conftest import REPO, main_command, run_main

pytestmark = pytest.mark.slow
RUN = dict(train__steps=5, eval__num_batches=2, sample__num_samples=0, mesh__shape=(4, 2, 1))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def read_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return [r["loss"] for r in records], [r["val_loss"] for r in records if "val_loss" in r]


def test_two_processes_match_one(tmp_path):
  single = str(tmp_path / "single")
  result = run_main(single, **RUN)
  assert result.returncode == 0, result.stderr[-2000:]

  multi = str(tmp_path / "multi")
  port = free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  processes = [
      subprocess.Popen(
          main_command(multi, **RUN, distributed__coordinator_address=f"127.0.0.1:{port}",
                       distributed__num_processes=2, distributed__process_id=i),
          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)
  ]
  outputs = [p.communicate(timeout=300) for p in processes]
  for p, (_, stderr) in zip(processes, outputs):
    assert p.returncode == 0, stderr[-3000:]
  # Only process 0 prints the summary (gloo itself chats on stdout) and writes logs.
  assert '"step": 5' in outputs[0][0] and '"step"' not in outputs[1][0]

  single_train, single_val = read_losses(single)
  multi_train, multi_val = read_losses(multi)
  assert len(multi_train) == 5 and len(multi_val) == 1
  # Same global batches and the same mesh; the all-reduce crosses processes through gloo,
  # which may sum in another order: agree to 1e-5 (float32).
  np.testing.assert_allclose(multi_train, single_train, rtol=1e-5)
  np.testing.assert_allclose(multi_val, single_val, rtol=1e-5)
