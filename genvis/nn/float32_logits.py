"""Output-head matmuls whose logits come out in float32 even under bfloat16 compute.

Casting a bfloat16 matmul's result to float32 afterwards keeps bfloat16's 8-bit mantissa:
logits of magnitude 32-64 are then rounded to steps of 0.25, and per-token log-probabilities
(the loss, bits per token, few-shot scores) move by about 0.1. Here the matmul still runs on
bfloat16 operands but writes its float32 accumulator, as MaxText's `logits_dot_in_fp32` does.

The backward pass is the one the cast-afterwards head had: the float32 cotangent is cast to
the compute dtype and both gradient matmuls run in it. Left to JAX's own transpose rule, the
float32 cotangent would meet a bfloat16 operand and the two largest matmuls of a GPT-2 step
(against the [50257, 768] table) would run in float32.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general` with a float32 result (a drop-in `dot_general` for `nn.Dense`)."""
  del preferred_element_type  # always float32
  if lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32:
    return lax.dot_general(lhs, rhs, dimension_numbers, precision)
  return _float32_out(dimension_numbers, precision, lhs, rhs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _float32_out(dimension_numbers, precision, lhs, rhs):
  return lax.dot_general(lhs, rhs, dimension_numbers, precision,
                         preferred_element_type=jnp.float32)


def _float32_out_fwd(dimension_numbers, precision, lhs, rhs):
  return _float32_out(dimension_numbers, precision, lhs, rhs), (lhs, rhs)


def _float32_out_bwd(dimension_numbers, precision, operands, cotangent):
  lhs, rhs = operands
  _, vjp = jax.vjp(lambda a, b: lax.dot_general(a, b, dimension_numbers, precision), lhs, rhs)
  return vjp(cotangent.astype(jnp.result_type(lhs, rhs)))


_float32_out.defvjp(_float32_out_fwd, _float32_out_bwd)
