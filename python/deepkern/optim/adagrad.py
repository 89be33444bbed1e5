"""Adagrad: per-coordinate step sizes from the accumulated squared gradients."""

from __future__ import annotations

from . import reference
from .optimizer import Optimizer, bool_option, full_like, nonneg_option


class Adagrad(Optimizer):
    r"""Adagrad (torch.optim.Adagrad, step for step).

    Args:
      params                     iterable of Parameters or of param-group dicts
      lr                         learning rate (default 1e-2)
      lr_decay                   the learning rate at step t is lr / (1 + (t - 1) * lr_decay)
      weight_decay               L2 penalty added to the gradient (default 0)
      initial_accumulator_value  starting value of the accumulator G (default 0)
      eps                        added to the denominator (default 1e-10)
      maximize                   ascend the objective instead of descending

    One step at step count t (from 1), element-wise::

        g    <- g + weight_decay * p
        G    <- G + g * g
        p    <- p - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(G) + eps)

    Coordinates that have seen large gradients get small steps and rarely-updated ones keep
    large steps; since G only grows, every step size decays over training.

    The textbook form is p <- p - eta / sqrt(G + eps) * g, with eps *inside* the root. PyTorch
    (and deepkern) add eps *outside*: sqrt(G) + eps. Once G >> eps the two agree; they differ
    where G is still ~0 (a coordinate that has had only zero gradients): the step ratio
    g / sqrt(G + eps) is capped near |g| / sqrt(eps), while g / (sqrt(G) + eps) is capped near
    |g| / eps, which is why PyTorch's default eps (1e-10) is much smaller than the textbook's
    (1e-8 under the root).

    Deliberate differences: the state (``step``, ``sum``) is created when a group is added,
    also for groups added after construction, and a group's own
    ``initial_accumulator_value`` is honoured (PyTorch uses the constructor's for every group).
    """

    _kind = "adagrad"
    _reference = staticmethod(reference.adagrad)
    _state_names = ("sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 maximize=False):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize))

    def _check_options(self, group):
        nonneg_option(group, "lr", "learning rate")
        nonneg_option(group, "lr_decay", "lr_decay value")
        nonneg_option(group, "weight_decay", "weight_decay value")
        nonneg_option(group, "initial_accumulator_value", "initial_accumulator_value value")
        nonneg_option(group, "eps", "epsilon value")
        bool_option(group, "maximize")

    def _init_state(self, p, group):
        self.state[p] = {"step": 0, "sum": full_like(p.data, group["initial_accumulator_value"])}

    def _kernel_state(self, group, st, new, data):
        if "sum" not in st:  # e.g. after load_state_dict of a state without this parameter
            new["sum"] = full_like(data, group["initial_accumulator_value"])
        return [new.get("sum", st.get("sum")), None, None]

    def _row(self, group, st, new):
        t = new["step"] = st.get("step", 0) + 1
        return dict(clr=group["lr"] / (1 + (t - 1) * group["lr_decay"]), weight_decay=group["weight_decay"],
                    eps=group["eps"])
