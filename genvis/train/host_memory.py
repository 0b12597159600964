"""Keep freed host memory in the process, so XLA:CPU steps stop page-faulting.

XLA:CPU allocates a step's temporaries with malloc on every execution and frees them at the
end. glibc hands a large block back to the kernel when it is freed: it serves blocks over its
mmap threshold (adaptive, at most 32 MiB) with mmap and frees them with munmap, trims the top
of its heap past the trim threshold, and a worker thread's heap cannot hold a block over
64 MiB at all, so those are always mapped and unmapped. The next step then faults every page
of its temporaries back in, zero-filled:
- the Shakespeare "tiny" GPT (about 50 MiB of temporaries): 13,400 page faults and 28 ms of
  kernel time per 50 ms step; steps grew super-linearly with depth (2 layers 17 ms, 3
  layers 36 ms);
- the "baby" GPT (one 7.2 GB block of temporaries): 2.1 million page faults and 6.9 s of
  kernel time per 14.6 s step.

`keep_freed_memory()` raises both thresholds to 1 GiB and caps malloc at one arena, so
threads that first allocate after the call share the main heap, which keeps what is freed.
malloc then recycles blocks up to 1 GiB the way a device's caching allocator does: the tiny
GPT's step went from 50 ms to 36 ms with no page faults. `genvis/__init__.py` calls it on CPU
hosts, before JAX starts its threads, and the trainer again before stepping: in the test
suite, tests that ran tfds pipelines left a freed 48 MiB block faulting in again until the
settings were re-applied (libtensorflow_cc calls mallopt).

Blocks over 1 GiB are still mapped afresh on every step. Without that limit the baby GPT's
steps took 10 s instead of 14.6 s, but its heap grew by another 6.7 GB every third step (the
freed block was not always reusable), which ran a 23 GB machine out of memory.

The costs: host memory the process frees (up to 1 GiB at the top of the heap) stays reserved
for it, and threads share one malloc lock (no slowdown seen on the tiny GPT or its input
pipeline; XLA allocates a few blocks per step). Where malloc has no mallopt (not glibc)
nothing changes; where it refuses a setting (old glibc caps the mmap threshold at 32 MiB) the
rest still apply, with a warning.
"""

import ctypes
import ctypes.util
import glob
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_SETTINGS = (  # option name, option, values to try in order (old glibc caps at 32 MiB)
    ("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, (1 << 30, 32 << 20)),
    ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, (1 << 30,)),
    ("M_ARENA_MAX", _M_ARENA_MAX, (1,)),
)
# Device nodes of accelerators JAX would compute on instead of the CPU.
_ACCELERATOR_NODES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")

_warned = False


def keep_freed_memory() -> bool:
  """Applies the settings (again: other libraries may have changed them; it is cheap); True
  when malloc took all of them."""
  global _warned
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
  except (OSError, AttributeError, TypeError):
    return False  # no mallopt: nothing to tune
  refused = [name for name, option, values in _SETTINGS
             if not any(mallopt(option, value) == 1 for value in values)]
  if refused and not _warned:
    _warned = True
    log.warning("malloc refused %s; XLA:CPU steps may page-fault their temporaries in again "
                "on every call", ", ".join(refused))
  return not refused


def computes_on_cpu() -> bool:
  """Whether JAX will compute on this host's CPU, decided without starting JAX's backends:
  JAX_PLATFORMS when set, else the absence of GPU and TPU device nodes."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(glob.glob(pattern) for pattern in _ACCELERATOR_NODES)


def keep_freed_memory_on_cpu_hosts() -> bool:
  """keep_freed_memory() where JAX computes on the CPU; elsewhere host malloc is left alone
  (input pipelines there allocate from many threads, and the device has its own allocator)."""
  return computes_on_cpu() and keep_freed_memory()
