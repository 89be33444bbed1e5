"""RMSprop: divide each step by a running root mean square of the gradient."""

from __future__ import annotations

from . import reference
from .optimizer import Optimizer, bool_option, nonneg_option


class RMSprop(Optimizer):
    r"""RMSprop (torch.optim.RMSprop, step for step; Hinton's lecture 6e).

    Args:
      params        iterable of Parameters or of param-group dicts
      lr            learning rate (default 1e-2)
      alpha         decay of the running averages (default 0.99)
      eps           added to the denominator, outside the root (default 1e-8)
      weight_decay  L2 penalty added to the gradient (default 0)
      momentum      momentum factor applied to the normalized step (default 0)
      centered      normalize by an estimate of the gradient's variance instead of its
                    second moment
      maximize      ascend the objective instead of descending

    One step, element-wise::

        g    <- g + weight_decay * p
        v    <- alpha * v + (1 - alpha) * g * g
        s    <- sqrt(v - m * m) + eps,  m <- m + (1 - alpha) * (g - m)    (centered)
        s    <- sqrt(v) + eps                                             (otherwise)
        b    <- momentum * b + g / s;   p <- p - lr * b                  (momentum > 0)
        p    <- p - lr * g / s                                           (otherwise)

    The textbook update is v <- beta * v + (1 - beta) * g^2, w <- w - eta / sqrt(v) * g:
    Adagrad's accumulated sum replaced by an exponentially weighted average, so old gradients
    are forgotten and the step size stops shrinking. ``alpha`` is that beta; PyTorch adds eps
    outside the root to keep the division finite while v is still ~0.
    State per parameter: ``step``, ``square_avg`` (v), ``momentum_buffer`` (momentum > 0),
    ``grad_avg`` (m, centered). Buffers missing when an option is switched on later are
    created as zeros (PyTorch raises KeyError then).
    """

    _kind = "rmsprop"
    _reference = staticmethod(reference.rmsprop)
    _state_names = ("square_avg", "momentum_buffer", "grad_avg")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 maximize=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize))

    def _check_options(self, group):
        nonneg_option(group, "lr", "learning rate")
        nonneg_option(group, "eps", "epsilon value")
        nonneg_option(group, "momentum", "momentum value")
        nonneg_option(group, "weight_decay", "weight_decay value")
        nonneg_option(group, "alpha", "alpha value")
        bool_option(group, "centered")
        bool_option(group, "maximize")

    def _kernel_state(self, group, st, new, data):
        return self._buffers(["square_avg", "momentum_buffer" if group["momentum"] > 0 else None,
                              "grad_avg" if group["centered"] else None], st, new, data)

    def _row(self, group, st, new):
        new["step"] = st.get("step", 0) + 1
        alpha = group["alpha"]
        return dict(lr=group["lr"], weight_decay=group["weight_decay"], alpha=alpha, one_minus_alpha=1.0 - alpha,
                    eps=group["eps"], momentum=group["momentum"], centered=group["centered"])
