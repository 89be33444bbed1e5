"""Adam and AdamW: momentum on the gradient, normalized by a running RMS, bias-corrected."""

from __future__ import annotations

import math
import numbers

from . import reference
from .optimizer import Optimizer, bool_option, nonneg_option, real_option


class Adam(Optimizer):
    r"""Adam (torch.optim.Adam, step for step; Kingma & Ba 2015), with optional AMSGrad.

    Args:
      params        iterable of Parameters or of param-group dicts
      lr            learning rate (default 1e-3)
      betas         (beta1, beta2): decays of the first and second moment averages, each in
                    [0, 1) (default (0.9, 0.999))
      eps           added to the bias-corrected RMS (default 1e-8)
      weight_decay  L2 penalty added to the gradient (default 0; see AdamW for decoupled)
      amsgrad       normalize by the largest second moment seen so far (Reddi et al. 2018)
      maximize      ascend the objective instead of descending

    One step at step count t (from 1), element-wise::

        g  <- g + weight_decay * p
        m  <- beta1 * m + (1 - beta1) * g                  (first moment: momentum)
        v  <- beta2 * v + (1 - beta2) * g * g              (second moment: RMSprop's average)
        v' <- max(v', v) and use v' below                  (amsgrad)
        p  <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    "Adam = RMSprop + momentum": m is a momentum buffer of the gradient, v the running mean
    square that RMSprop divides by. Both start at 0, so early averages are biased toward 0;
    dividing by 1 - beta^t removes that bias (m_hat = m / (1 - beta1^t), v_hat = v /
    (1 - beta2^t)), and the step is lr * m_hat / (sqrt(v_hat) + eps) -- the paper's Algorithm 1,
    eps added after the bias correction. (The paper's "more efficient" variant folds the
    corrections into the step size and adds eps before correcting; the results then differ
    slightly while v is small.) The two corrections are computed in double on the host each
    step, per parameter (a parameter skipped on some steps has its own step count).
    State per parameter: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v), ``max_exp_avg_sq``
    (amsgrad).
    """

    _kind = "adam"
    _reference = staticmethod(reference.adam)
    _state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
                 maximize=False):
        super().__init__(params, dict(lr=lr, betas=_pair(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize))

    def _check_options(self, group):
        nonneg_option(group, "lr", "learning rate")
        nonneg_option(group, "eps", "epsilon value")
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of floats, got {betas!r}")
        for i, b in enumerate(betas):
            if not 0.0 <= real_option({f"betas[{i}]": b}, f"betas[{i}]") < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}")
        nonneg_option(group, "weight_decay", "weight_decay value")
        bool_option(group, "amsgrad")
        bool_option(group, "maximize")

    def _kernel_state(self, group, st, new, data):
        return self._buffers(["exp_avg", "exp_avg_sq", "max_exp_avg_sq" if group["amsgrad"] else None],
                             st, new, data)

    def _row(self, group, st, new):
        t = new["step"] = st.get("step", 0) + 1
        beta1, beta2 = (float(b) for b in group["betas"])
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        return dict(step_size=lr / (1 - beta1 ** t), bias_correction2_sqrt=math.sqrt(1 - beta2 ** t),
                    weight_decay=0.0 if self._decoupled else wd,
                    param_scale=1.0 - lr * wd if self._decoupled else 1.0,
                    beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
                    eps=group["eps"], amsgrad=group["amsgrad"])


class AdamW(Adam):
    r"""AdamW: Adam with decoupled weight decay (torch.optim.AdamW; Loshchilov & Hutter 2019).

    Same arguments as Adam, except weight_decay defaults to 1e-2. The decay no longer goes
    through the gradient (where Adam's normalization would scale it per coordinate); the
    parameter shrinks directly, before the Adam step::

        p <- p * (1 - lr * weight_decay)
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)   (m, v as Adam,
                                                                                 from g alone)
    """

    _reference = staticmethod(reference.adamw)
    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize)


def _pair(betas):
    """betas as a tuple (a list is accepted); anything else is left for _check_options."""
    if isinstance(betas, list) and len(betas) == 2 and all(isinstance(b, numbers.Real) for b in betas):
        return tuple(betas)
    return betas
