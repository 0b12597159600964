"""XLA compiler options for the trainer's train and eval steps, from `config.train.xla_options`,
and the fixed ones of its parameter init (`for_init`).

A config names options for every backend it may run on; each compile gets those of its own
backend (`xla_gpu_*` on GPUs, `xla_cpu_*` on CPUs, `xla_tpu_*` on TPUs) and every option
without a backend prefix. XLA:CPU happens to accept and ignore XLA:GPU's options, but nothing
promises that of every backend's compiler (a TPU's has options of its own).

The default turns off XLA:GPU's Triton GEMM fusions, so that matmuls go to cuBLAS (NVIDIA's
JAX-Toolbox images once set the same flag for all they ran). On an H200, GPT-2 124M's step at
batch 16 x 1024 went from 40.9 to 34.7 ms: the tied LM head's three GEMMs had run as Triton
fusions at about 330 TFLOP/s (experiments/results/lm/README.md).
"""

import contextlib

import jax

from genvis.errors import UserError

BACKEND_PREFIXES = {"gpu": "xla_gpu_", "cpu": "xla_cpu_", "tpu": "xla_tpu_"}

DEFAULT = {"xla_gpu_enable_triton_gemm": False}

# The parameter init runs once, but its compile set a small model's start-up on CPU: one
# threefry per parameter, each its own LLVM function (MAE on digits 8.5 s, tiny GPT 3.1 s).
# LLVM's O1 takes 55-60 % of that and gives bit-identical parameters (checked for GPT-2 124M,
# whose init then also runs as fast; tests/train/test_trainer.py checks a tiny GPT). O0 is
# faster to compile still, but changes some parameters in the last bit and ran GPT-2 124M's
# init 5x slower.
INIT_ON_CPU = {"xla_backend_optimization_level": 1}


def for_init(platform: str) -> dict:
  """Compiler options for the trainer's parameter init on `platform`."""
  return dict(INIT_ON_CPU) if platform == "cpu" else {}


def for_backend(options, platform: str) -> dict:
  """The options in `options` that apply to `platform` (a `jax.Device.platform`)."""
  own = BACKEND_PREFIXES.get(platform)
  others = tuple(prefix for prefix in BACKEND_PREFIXES.values() if prefix != own)
  return {key: value for key, value in dict(options).items() if not key.startswith(others)}


def is_option_error(error: Exception) -> bool:
  """Whether a compile failed on its options: an unknown name or a value of the wrong type."""
  message = str(error)
  return "No such compile option" in message or "While setting option" in message


@contextlib.contextmanager
def errors_name_the_key():
  """A compile under it that fails on its options raises a one-line UserError naming
  config.train.xla_options; other errors pass through unchanged."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if not is_option_error(e):
      raise
    raise UserError(f"config.train.xla_options: {str(e).splitlines()[0]}") from None
