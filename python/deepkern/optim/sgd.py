"""SGD, with heavy-ball momentum (Momentum) or Nesterov momentum (NAG)."""

from __future__ import annotations

from . import reference
from .optimizer import Optimizer, bool_option, nonneg_option, real_option, zeros_like


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with momentum (torch.optim.SGD, step for step).

    Args:
      params        iterable of Parameters or of param-group dicts
      lr            learning rate (default 1e-3)
      momentum      momentum factor mu (default 0: plain SGD)
      dampening     scales the new gradient in the momentum buffer by 1 - dampening (default 0)
      weight_decay  L2 penalty lambda added to the gradient (default 0)
      nesterov      Nesterov momentum (needs momentum > 0 and dampening == 0)
      maximize      ascend the objective instead of descending

    One step, for each parameter p with gradient g (all element-wise)::

        g   <- g + weight_decay * p                   (weight_decay != 0)
        b   <- g                                      (first step: the buffer starts as g)
        b   <- momentum * b + (1 - dampening) * g     (later steps)
        d   <- g + momentum * b   if nesterov   else   b
        p   <- p - lr * d

    With momentum = 0 this is p <- p - lr * g, the textbook gradient descent update
    W := W - alpha * dJ/dW, taken on a mini-batch gradient.

    Momentum. Textbooks write v_t = gamma * v_{t-1} + eta * grad J(theta), theta -= v_t: the
    velocity carries the learning rate. PyTorch (and deepkern) keep the learning rate out of
    the buffer: b_t = mu * b_{t-1} + g_t, p -= lr * b_t. For a constant lr the two are the
    same sequence (v_t = lr * b_t); when lr changes (a schedule), PyTorch's form rescales the
    whole accumulated velocity at once, the textbook form only the new gradient.

    Nesterov. The textbook form evaluates the gradient at the look-ahead point:
    v_t = gamma * v_{t-1} + eta * grad J(theta - gamma * v_{t-1}). Rewriting it in the variable
    phi = theta - gamma * v (the look-ahead point itself) removes the second evaluation: the
    model's gradient at the stored parameter *is* the look-ahead gradient, and the update
    becomes b_t = mu * b_{t-1} + g_t, phi -= lr * (g_t + mu * b_t) -- the formula above. So the
    parameters this optimizer holds are the look-ahead points of the textbook iteration.

    State per parameter: ``momentum_buffer`` (when momentum != 0).
    """

    _kind = "sgd"
    _reference = staticmethod(reference.sgd)
    _state_names = ("momentum_buffer",)
    _has_step = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 maximize=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov, maximize=maximize))

    def _check_options(self, group):
        nonneg_option(group, "lr", "learning rate")
        nonneg_option(group, "momentum", "momentum value")
        nonneg_option(group, "weight_decay", "weight_decay value")
        real_option(group, "dampening")
        bool_option(group, "maximize")
        if bool_option(group, "nesterov") and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _kernel_state(self, group, st, new, data):
        if group["momentum"] == 0:
            return [None, None, None]
        buf = st.get("momentum_buffer")
        if buf is None:  # first step: the kernel writes the buffer (= g) without reading it
            buf = new["momentum_buffer"] = zeros_like(data)
        return [buf, None, None]

    def _row(self, group, st, new):
        return dict(lr=group["lr"], weight_decay=group["weight_decay"], momentum=group["momentum"],
                    one_minus_dampening=1.0 - group["dampening"], nesterov=group["nesterov"],
                    first_step="momentum_buffer" in new)


class Momentum(SGD):
    """SGD with (heavy-ball) momentum: ``SGD(params, lr, momentum=0.9, ...)`` -- see SGD for
    the update and how it relates to the textbook v_t = gamma * v_{t-1} + eta * grad J.

    Takes SGD's other keyword arguments (dampening, weight_decay, maximize); nesterov is
    always False (use NAG).
    """

    def __init__(self, params, lr=1e-3, momentum=0.9, dampening=0, weight_decay=0, *, maximize=False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=False, maximize=maximize)


class NAG(SGD):
    """Nesterov accelerated gradient: ``SGD(params, lr, momentum=0.9, nesterov=True, ...)``.

    The update is p <- p - lr * (g + momentum * b) with b <- momentum * b + g; SGD's docstring
    shows why this is the textbook look-ahead gradient step written in the look-ahead point.
    Takes SGD's other keyword arguments; dampening != 0 (or momentum 0) is a ValueError, as in
    PyTorch.
    """

    def __init__(self, params, lr=1e-3, momentum=0.9, dampening=0, weight_decay=0, *, maximize=False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=True, maximize=maximize)
