#!/usr/bin/env bash
# Every check that needs a GPU, in one go (one GPU, a few minutes; logs under $OUT):
#   1. the GPU-only tests (cuDNN attention against XLA's) and the step, embedding, logits and GPT
#      tests, on the GPU;
#   2. GPT-2 124M training throughput and MFU (gpu_gpt2.py), then the PyTorch reference
#      (torch.compile, bf16 autocast, flash attention) on the same GPU;
#   3. the sampler's overhead over a bare forward for DDPM++ on CIFAR-10 shapes.
#
#   OUT=/tmp/gpu_checks bash experiments/bench/gpu_checks.sh
# A step that fails is reported and the next one still runs; the summary lines come last.
set -u
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
status=0

step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, keep its last line for the summary
  local name=$1
  shift
  echo "=== $name: $*"
  local start=$SECONDS
  if ! "$@" > "$OUT/$name.log" 2>&1; then
    echo "FAILED ($name)"; tail -n 30 "$OUT/$name.log"; status=1
  fi
  echo "$name ($((SECONDS - start)) s): $(tail -n 1 "$OUT/$name.log")" >> "$OUT/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  | tee "$OUT/gpu.txt"
$PY -c "import jax, flax, optax, orbax.checkpoint as o, chex, torch; print('jax', jax.__version__,
'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, 'torch',
torch.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"

step tests env JAX_PLATFORMS=cuda $PY -m pytest -q -p no:cacheprovider \
  tests/nn/test_cudnn_attention.py tests/nn/test_token_embedding.py tests/nn/test_float32_logits.py \
  tests/train/test_step.py tests/models/test_gpt.py
step gpt2 $PY experiments/bench/gpu_gpt2.py
step torch_gpt2 $PY experiments/bench/reference/torch_gpt2_gpu.py
step sde_ddpmpp $PY experiments/bench/sde_sampling.py --variant ddpmpp-cifar10 \
  --image_size 32 --channels 3 --batch 128

echo "=== summary"
cat "$OUT/summary.txt"
exit $status
