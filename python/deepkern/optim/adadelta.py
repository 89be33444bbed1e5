"""Adadelta: steps sized by the running RMS of past steps."""

from __future__ import annotations

from . import reference
from .optimizer import Optimizer, bool_option, nonneg_option, real_option


class Adadelta(Optimizer):
    r"""Adadelta (torch.optim.Adadelta, step for step; Zeiler 2012).

    Args:
      params        iterable of Parameters or of param-group dicts
      lr            multiplies the step (default 1.0: Zeiler's method has no learning rate)
      rho           decay of both running averages, in [0, 1] (default 0.9)
      eps           added inside both square roots (default 1e-6)
      weight_decay  L2 penalty added to the gradient (default 0)
      maximize      ascend the objective instead of descending

    One step, element-wise::

        g      <- g + weight_decay * p
        E[g2]  <- rho * E[g2] + (1 - rho) * g * g
        dx     <- sqrt(E[dx2] + eps) / sqrt(E[g2] + eps) * g       (E[dx2] of the previous step)
        E[dx2] <- rho * E[dx2] + (1 - rho) * dx * dx
        p      <- p - lr * dx

    The ratio RMS[dx] / RMS[g] gives the step the units of the parameter (the paper's
    argument from Newton's method), so no global learning rate is needed; eps sits inside
    both roots, exactly as in the paper, and also starts the process (E[dx2] = 0 at first).
    State per parameter: ``step``, ``square_avg`` (E[g2]), ``acc_delta`` (E[dx2]).
    """

    _kind = "adadelta"
    _reference = staticmethod(reference.adadelta)
    _state_names = ("square_avg", "acc_delta")

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, maximize=False):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize))

    def _check_options(self, group):
        nonneg_option(group, "lr", "learning rate")
        if not 0.0 <= real_option(group, "rho") <= 1.0:
            raise ValueError(f"Invalid rho value: {group['rho']}")
        nonneg_option(group, "eps", "epsilon value")
        nonneg_option(group, "weight_decay", "weight_decay value")
        bool_option(group, "maximize")

    def _kernel_state(self, group, st, new, data):
        return self._buffers(["square_avg", "acc_delta"], st, new, data)

    def _row(self, group, st, new):
        new["step"] = st.get("step", 0) + 1
        rho = group["rho"]
        return dict(lr=group["lr"], weight_decay=group["weight_decay"], rho=rho, one_minus_rho=1.0 - rho,
                    eps=group["eps"])
