"""keep_freed_memory: a large block freed and allocated again is not faulted in again;
computes_on_cpu: when genvis applies it."""

import ctypes
import ctypes.util
import resource
import threading

import pytest

from genvis.train import host_memory

BLOCK = 48 << 20  # over glibc's largest default mmap threshold (32 MiB), under a thread heap
PAGES = BLOCK // resource.getpagesize()


def _faults_on_reuse(libc) -> int:
  """Page faults while writing a block that was allocated, written and freed before."""
  first = libc.malloc(BLOCK)
  ctypes.memset(first, 1, BLOCK)
  libc.free(first)
  second = libc.malloc(BLOCK)
  before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
  ctypes.memset(second, 2, BLOCK)
  faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
  libc.free(second)
  return faults


@pytest.fixture(scope="module")
def libc():
  lib = ctypes.CDLL(ctypes.util.find_library("c"))
  if not hasattr(lib, "mallopt"):
    pytest.skip("not glibc: keep_freed_memory does nothing here")
  lib.malloc.restype = ctypes.c_void_p
  lib.malloc.argtypes = [ctypes.c_size_t]
  lib.free.argtypes = [ctypes.c_void_p]
  if not host_memory.keep_freed_memory():
    pytest.skip("this malloc refused a setting (see the warning)")
  return lib


def test_a_freed_block_is_reused_without_page_faults(libc):
  # Without the settings every page faults again (PAGES of them), as XLA:CPU temporaries did.
  assert _faults_on_reuse(libc) < PAGES // 20


def test_worker_threads_reuse_freed_blocks_too(libc):
  # XLA allocates on its own threads, whose per-thread heaps glibc would unmap when empty.
  faults = []
  worker = threading.Thread(target=lambda: faults.append(_faults_on_reuse(libc)))
  worker.start()
  worker.join()
  assert faults[0] < PAGES // 20


def test_applying_again_reports_the_settings_as_applied(libc):
  assert host_memory.keep_freed_memory()
  assert _faults_on_reuse(libc) < PAGES // 20


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
