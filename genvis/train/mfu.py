"""Model FLOPs utilisation: achieved training FLOPs over the device's peak.

Peaks are dense bf16 matmul throughput per chip from the vendors' data sheets. On CPU there is
no data sheet figure worth trusting, so the peak is measured once per process: the best
throughput of a large float32 `jnp.dot` compiled by XLA on this machine.
"""

import functools
import time

import jax
import jax.numpy as jnp

# FLOP/s per device (dense bf16).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
}


@functools.lru_cache(maxsize=None)
def measured_cpu_peak(size: int = 2048, repeats: int = 5) -> float:
  """Best float32 matmul FLOP/s of one [size, size] @ [size, size] over `repeats` runs, on
  the host's CPU whatever the default backend."""
  a = jnp.ones((size, size), jnp.float32, device=jax.devices("cpu")[0])
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def device_peak_flops(device=None) -> float | None:
  """Peak FLOP/s of one device: the table for accelerators, a measurement on CPU, None for
  an accelerator not in the table."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    # All "CPU devices" of a process share the same cores: the peak is the host's.
    return measured_cpu_peak()
  kind = device.device_kind
  for name, peak in sorted(PEAK_FLOPS.items(), key=lambda item: -len(item[0])):
    if kind.startswith(name) or name in kind:
      return peak
  return None


def total_peak_flops(num_devices: int) -> float | None:
  """Peak of the `num_devices` devices of a run's mesh (CPU: the host's peak once per
  process, since simulated CPU devices share the host's cores)."""
  device = jax.devices()[0]
  peak = device_peak_flops(device)
  if peak is None:
    return None
  if device.platform == "cpu":
    return peak * jax.process_count()
  return peak * num_devices
