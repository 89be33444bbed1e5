"""fused_step: gradient clipping, the optimizer step and the EMA update in two passes.

A common training step is three separate passes over memory in PyTorch:

    total = clip_grad_norm_(params, max_norm)   # read grads (norm), then read+write grads (scale)
    optimizer.step()                            # read grads, params, state; write params, state
    ema.update()                                # read params; read+write the averages

Only the norm has to be a pass of its own (the clip factor depends on every gradient). The
scale can be applied as the gradient is loaded by the optimizer kernel (it is one multiply
in a register), and the EMA can be updated from the new parameter value while it is still in
a register. ``fused_step`` does exactly that: one reduction pass over the gradients, then one
pass that reads each gradient, parameter, state and average element once and writes each
updated value once. Per float32 element with Adam that is 4 + 36 = 40 bytes instead of
4 + 8 + 28 + 12 = 52, and the gradients are never written (they keep their unclipped values).
"""

from __future__ import annotations

import math

from ..nn.utils import _check_max_norm, _check_norm_type, _nonfinite_error, total_norm
from .ema import EMA
from .optimizer import Optimizer
from .reference import clip_coef


def fused_step(optimizer: Optimizer, *, max_norm=None, norm_type=2.0, ema: EMA | None = None,
               error_if_nonfinite: bool = False):
    """One update: clip by the global gradient norm, step, and update an EMA, fused.

    Args:
      optimizer           any deepkern.optim optimizer
      max_norm            clip so that the global norm of the stepped gradients is at most
                          this (None: no clipping)
      norm_type           the norm's order (2.0, 1.0, inf, ...), as clip_grad_norm_
      ema                 a deepkern.optim.EMA to update after the step (None: none)
      error_if_nonfinite  raise RuntimeError if the norm is NaN or inf (nothing is written)

    Returns the total norm (a float) when max_norm is given, else None.

    Equivalent, parameter for parameter and bit for bit (same ISA), to::

        total = clip_grad_norm_([p for p stepped], max_norm, norm_type)  # (*)
        optimizer.step()
        ema.update()

    except that the gradients are left unscaled (*): the clip factor is applied as each
    gradient is read. The norm covers the parameters the optimizer steps (those with a
    gradient and requires_grad). Everything is validated before anything is written.
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"fused_step needs a deepkern.optim optimizer, got {type(optimizer).__name__}")
    if ema is not None and not isinstance(ema, EMA):
        raise TypeError(f"ema must be a deepkern.optim.EMA or None, got {type(ema).__name__}")
    if max_norm is not None:
        max_norm = _check_max_norm(max_norm)
        norm_type = _check_norm_type(norm_type)
    if not isinstance(error_if_nonfinite, bool):
        raise TypeError("error_if_nonfinite must be a bool")
    jobs = optimizer._collect()
    if ema is not None:
        ema._check()
    total, coef = None, 1.0
    if max_norm is not None:
        total = total_norm([job.grad for job in jobs], norm_type)
        if error_if_nonfinite and not math.isfinite(total):
            raise _nonfinite_error(norm_type)
        coef = clip_coef(total, max_norm)
    optimizer._apply(jobs, grad_scale=coef, ema=ema)
    return total


__all__ = ["fused_step"]
