"""genvis: generative vision and language models in JAX/Flax."""

from genvis.train import host_memory as _host_memory

# Here, at import, because it must come before JAX starts its CPU threads: a thread that
# allocated before it keeps a heap of its own, from which large blocks are always unmapped
# on free (genvis/train/host_memory.py).
_host_memory.keep_freed_memory_on_cpu_hosts()
