"""Sampler overhead: one compiled PC step against one bare score-network forward, and the
adaptive probability-flow ODE's function evaluations and time.

  python experiments/bench/sde_sampling.py [--workdir DIR] [--batch 64]
  python experiments/bench/sde_sampling.py --variant ddpmpp-cifar10 --image_size 32 \
      --channels 3 --batch 128                                # GPU: DDPM++ on CIFAR-10 shapes

The network: a trained sde run's EMA parameters (--workdir, e.g. sde_digits.py's) through
the task's score, or else a freshly initialised U-Net of --variant (genvis.models.unet; VP
SDE, DDPM++ conventions) on --image_size x --image_size x --channels images. An untrained
network's output is ~0 (zero-initialised output layers), so its ODE NFE is not meaningful
("trained": false in the JSON); the step timings are.

Timings (seconds of wall clock, the median of --repeats runs, after compiling):
- forward_ms: one jitted score evaluation of the batch, called from Python;
- forward_in_loop_ms: the same forward inside a compiled lax.fori_loop (x += 1e-3 score),
  per iteration, from the difference of two loop lengths (the loop bound is traced, so both
  share one compile and dispatch costs cancel): the fairest "bare forward";
- pc_step_ms: samplers.pc_sampler with the reverse-diffusion predictor and no corrector,
  per step, from two step counts (num_steps is traced: one compile); one score evaluation a
  step, so pc_step_over_forward = pc_step_ms / forward_in_loop_ms is the sampler's overhead
  (goal <= 1.2);
- pc_langevin_step_ms: predictor + one Langevin corrector step (two evaluations a step);
- adaptive ODE (Tsit5, PID controller, rtol = atol = --ode_tol): NFE and seconds.

The last line printed is one JSON object with these figures.

Reference (`python experiments/bench/sde_sampling.py --workdir /tmp/bench/sde_digits_vp`: the
digits run of sde_digits.py, batch 64, CPU at load 5-8): forward 31.6 ms called, 30.7 ms in
the loop; PC step 30.7 ms = 1.00x the forward (1.14x in a run at load 8); predictor +
Langevin 59.1 ms = 0.96x two forwards; adaptive ODE at tol 1e-5: 487 NFE in 15.2 s.
No GPU was lent for this task: the --variant ddpmpp-cifar10 figure is still to be taken.
"""

import argparse
import json
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from genvis.diffusion import samplers
from genvis.diffusion import sde as sde_lib
from genvis.models import unet
from genvis.train.pretrained import load_trained


class FreshScore:
  """A freshly initialised U-Net under the VP SDE, with DDPM++'s score = -output / std."""

  def __init__(self, args):
    self.config = unet.UNetConfig(**unet.config_for(
        args.variant, image_size=args.image_size, channels=args.channels,
        attention_resolutions=(args.image_size // 2,) if args.variant == "cpu" else (16,)))
    self.model = unet.UNet(self.config)
    self.sde = sde_lib.VPSDE()
    self.shape = (args.image_size, args.image_size, args.channels)
    x = jnp.zeros((1, *self.shape))
    self.params = nn.meta.unbox(self.model.init(jax.random.key(0), x, jnp.ones(1),
                                                std=jnp.ones(1))["params"])

  def score(self, params, x, t):
    _, std = samplers.kernel(self.sde, t)
    out = self.model.apply({"params": params}, x, t, std=std)
    return -out / sde_lib.broadcast_to_data(std, out)


def timed(fn, repeats: int) -> float:
  """Median wall seconds of fn() (which blocks on its result), after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def per_iteration(run, short: int, long: int, repeats: int) -> float:
  """Seconds per iteration from two lengths of the same compiled loop."""
  return (timed(lambda: run(long), repeats) - timed(lambda: run(short), repeats)) / (long - short)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="", help="a finished sde run (EMA parameters)")
  parser.add_argument("--variant", default="cpu", choices=sorted(unet.VARIANTS))
  parser.add_argument("--image_size", type=int, default=8)
  parser.add_argument("--channels", type=int, default=1)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--short", type=int, default=10, help="loop lengths for differencing")
  parser.add_argument("--long", type=int, default=60)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--ode_tol", type=float, default=1e-5)
  args = parser.parse_args()

  if args.workdir:
    trainer, params = load_trained(args.workdir, {"mesh.shape": (1, 1, 1)})
    task = trainer.task
    sde, score_of, shape = task.sde, task.score, task.data_shape
    model_name = f"{args.workdir} ({task.config.data.source}, EMA)"
  else:
    fresh = FreshScore(args)
    sde, score_of, shape, params = fresh.sde, fresh.score, fresh.shape, fresh.params
    model_name = f"fresh {args.variant} U-Net"
  batch_shape = (args.batch, *shape)
  x = jax.random.normal(jax.random.key(1), batch_shape)
  t = jnp.full((args.batch,), 0.5)
  score_fn = jax.tree_util.Partial(score_of, params)

  forward = jax.jit(score_of)
  forward_s = timed(lambda: forward(params, x, t).block_until_ready(), 10 * args.repeats)

  @jax.jit
  def forward_loop(params, x, count):
    return jax.lax.fori_loop(0, count, lambda i, y: y + 1e-3 * score_of(params, y, t), x)
  loop_s = per_iteration(lambda n: forward_loop(params, x, n).block_until_ready(),
                         args.short, args.long, args.repeats)

  def pc(corrector):
    return lambda n: samplers.pc_sampler(sde, score_fn, batch_shape, jax.random.key(2), n,
                                         predictor="reverse_diffusion",
                                         corrector=corrector).x.block_until_ready()
  pc_s = per_iteration(pc("none"), args.short, args.long, args.repeats)
  pc_langevin_s = per_iteration(pc("langevin"), args.short, args.long, args.repeats)

  def ode():
    return samplers.adaptive_ode_sampler(sde, score_fn, batch_shape, jax.random.key(3),
                                         rtol=args.ode_tol, atol=args.ode_tol)
  ode_s = timed(lambda: ode().x.block_until_ready(), 1)
  ode_nfe = int(ode().nfe)

  print(json.dumps({
      "model": model_name, "trained": bool(args.workdir), "sde": type(sde).__name__,
      "batch": args.batch, "shape": list(shape),
      "forward_ms": round(1e3 * forward_s, 3),
      "forward_in_loop_ms": round(1e3 * loop_s, 3),
      "pc_step_ms": round(1e3 * pc_s, 3),
      "pc_step_over_forward": round(pc_s / loop_s, 3),
      "pc_step_over_forward_call": round(pc_s / forward_s, 3),
      "pc_langevin_step_ms": round(1e3 * pc_langevin_s, 3),
      "pc_langevin_step_over_2_forwards": round(pc_langevin_s / (2 * loop_s), 3),
      "ode_tol": args.ode_tol, "ode_nfe": ode_nfe, "ode_s": round(ode_s, 3),
      "device": str(jax.devices()[0].device_kind),
  }))


if __name__ == "__main__":
  main()
