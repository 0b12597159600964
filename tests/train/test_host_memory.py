"""Importing genvis on a CPU host makes malloc reuse a large freed block instead of faulting
it in again (keep_freed_memory); computes_on_cpu decides where that applies."""

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys

import pytest

from genvis.train import host_memory

# Runs in a fresh interpreter: what a user's process gets from `import genvis`, whatever
# the libraries this test session loaded before did to malloc.
_PROBE = r"""
import ctypes, ctypes.util, json, os, resource, threading
import genvis
from genvis.train import host_memory

BLOCK = 48 << 20  # over glibc's largest default mmap threshold (32 MiB), under a thread heap
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if os.environ.get("PROBE_RESET_THEN_REAPPLY"):  # as another library might, then genvis again
  libc.mallopt(-3, 0)  # M_MMAP_THRESHOLD = 0: every block mmapped
  host_memory.keep_freed_memory()

def faults_on_reuse():
  # Page faults while writing a block that was allocated, written and freed before.
  first = libc.malloc(BLOCK)
  ctypes.memset(first, 1, BLOCK)
  libc.free(first)
  second = libc.malloc(BLOCK)
  before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
  ctypes.memset(second, 2, BLOCK)
  faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
  libc.free(second)
  return faults

worker = []  # XLA allocates on its own threads
thread = threading.Thread(target=lambda: worker.append(faults_on_reuse()))
thread.start()
thread.join()
result = {"main": faults_on_reuse(), "worker": worker[0],
          "pages": BLOCK // resource.getpagesize()}
# Asked after measuring (a call where import skipped the settings would apply them now).
result["applied"] = host_memory.keep_freed_memory()
result["main_again"] = faults_on_reuse()
print(json.dumps(result))
"""


def _probe(**env) -> dict:
  out = subprocess.run([sys.executable, "-c", _PROBE], check=True, capture_output=True,
                       text=True, env={**os.environ, **env}).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_importing_genvis_on_a_cpu_host_stops_freed_blocks_faulting_in_again():
  if not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallopt"):
    pytest.skip("not glibc: keep_freed_memory does nothing here")
  result = _probe(JAX_PLATFORMS="cpu")
  if not result["applied"]:
    pytest.skip("this malloc refused a setting (see the warning)")
  # Without the settings every page faults again, on both threads.
  assert result["main"] < result["pages"] // 20, result
  assert result["worker"] < result["pages"] // 20, result


def test_importing_genvis_leaves_malloc_alone_where_jax_uses_an_accelerator():
  result = _probe(JAX_PLATFORMS="cuda")
  if not result["applied"]:
    pytest.skip("this malloc refused a setting (see the warning)")
  assert result["main"] > result["pages"] // 2, result  # glibc's default: unmapped on free
  assert result["main_again"] < result["pages"] // 20, result  # once applied


def test_applying_again_restores_settings_another_library_changed():
  result = _probe(JAX_PLATFORMS="cpu", PROBE_RESET_THEN_REAPPLY="1")
  if not result["applied"]:
    pytest.skip("this malloc refused a setting (see the warning)")
  assert result["main"] < result["pages"] // 20, result


@pytest.mark.parametrize("platforms,nodes,expected", [
    ("cpu", ["/dev/nvidia0"], True),  # JAX_PLATFORMS decides when set
    ("cuda,cpu", [], False),
    ("", [], True),  # otherwise: no accelerator device nodes
    ("", ["/dev/accel0"], False),
])
def test_computes_on_cpu_reads_jax_platforms_then_device_nodes(monkeypatch, platforms, nodes,
                                                               expected):
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  monkeypatch.setattr(host_memory.glob, "glob",
                      lambda pattern: [n for n in nodes if n.startswith(pattern.split("[")[0])])
  assert host_memory.computes_on_cpu() is expected
