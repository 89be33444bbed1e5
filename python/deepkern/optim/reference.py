"""The optimizer updates in plain NumPy: one readable function per optimizer.

Each function takes one parameter tensor, its gradient and its state (a dict, empty before
the first step), and returns ``(new_param, new_state)`` without modifying its inputs. They
follow torch.optim's for-loop implementations step for step (where eps sits, how weight
decay enters, the first momentum buffer, bias corrections), and are what the fused C++
kernels (csrc/cpu/optim_impl.h) are tested against. Call them with float64 arrays.

Notation: p parameter, g gradient, t step count (1 on the first step), lr learning rate.
"""

from __future__ import annotations

import math

import numpy as np


def _grad(param, grad, maximize, weight_decay):
    """The gradient an optimizer follows: negated to maximize, plus L2 weight decay."""
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    return g


def sgd(param, grad, state, *, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
        nesterov=False, maximize=False):
    """SGD with optional momentum (heavy ball) or Nesterov momentum.

        b_t = g_t                                  (t = 1: the buffer starts as the gradient)
        b_t = momentum * b_{t-1} + (1 - dampening) * g_t
        d_t = g_t + momentum * b_t   (Nesterov)   or   b_t
        p_t = p_{t-1} - lr * d_t
    """
    g = _grad(param, grad, maximize, weight_decay)
    new_state = {}
    if momentum != 0:
        buf = state.get("momentum_buffer")
        buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
        new_state["momentum_buffer"] = buf
        g = g + momentum * buf if nesterov else buf
    return param - lr * g, new_state


def adagrad(param, grad, state, *, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
            initial_accumulator_value=0.0, eps=1e-10, maximize=False):
    """Adagrad: each coordinate's step shrinks with its accumulated squared gradients.

        G_t = G_{t-1} + g_t^2                      (G_0 = initial_accumulator_value)
        lr_t = lr / (1 + (t - 1) * lr_decay)
        p_t = p_{t-1} - lr_t * g_t / (sqrt(G_t) + eps)
    """
    t = state.get("step", 0) + 1
    g = _grad(param, grad, maximize, weight_decay)
    total = state.get("sum")
    if total is None:
        total = np.full_like(param, initial_accumulator_value)
    total = total + g * g
    clr = lr / (1 + (t - 1) * lr_decay)
    return param - clr * g / (np.sqrt(total) + eps), {"step": t, "sum": total}


def adadelta(param, grad, state, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False):
    """Adadelta: the step's size comes from the running RMS of past steps, not from lr.

        E[g^2]_t  = rho * E[g^2]_{t-1} + (1 - rho) * g_t^2
        dx_t      = sqrt(E[dx^2]_{t-1} + eps) / sqrt(E[g^2]_t + eps) * g_t
        E[dx^2]_t = rho * E[dx^2]_{t-1} + (1 - rho) * dx_t^2
        p_t       = p_{t-1} - lr * dx_t
    """
    t = state.get("step", 0) + 1
    g = _grad(param, grad, maximize, weight_decay)
    square_avg = state.get("square_avg", np.zeros_like(param))
    acc_delta = state.get("acc_delta", np.zeros_like(param))
    square_avg = rho * square_avg + (1 - rho) * g * g
    delta = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * g
    acc_delta = rho * acc_delta + (1 - rho) * delta * delta
    return param - lr * delta, {"step": t, "square_avg": square_avg, "acc_delta": acc_delta}


def rmsprop(param, grad, state, *, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
            centered=False, maximize=False):
    """RMSprop: divide by a running RMS of the gradient.

        v_t = alpha * v_{t-1} + (1 - alpha) * g_t^2
        centered: m_t = alpha * m_{t-1} + (1 - alpha) * g_t;  s_t = sqrt(v_t - m_t^2) + eps
        else:     s_t = sqrt(v_t) + eps
        momentum > 0: b_t = momentum * b_{t-1} + g_t / s_t;  p_t = p_{t-1} - lr * b_t
        else:         p_t = p_{t-1} - lr * g_t / s_t
    """
    t = state.get("step", 0) + 1
    g = _grad(param, grad, maximize, weight_decay)
    square_avg = alpha * state.get("square_avg", np.zeros_like(param)) + (1 - alpha) * g * g
    new_state = {"step": t, "square_avg": square_avg}
    if centered:
        grad_avg = state.get("grad_avg", np.zeros_like(param))
        grad_avg = grad_avg + (1 - alpha) * (g - grad_avg)
        new_state["grad_avg"] = grad_avg
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if momentum > 0:
        buf = momentum * state.get("momentum_buffer", np.zeros_like(param)) + g / avg
        new_state["momentum_buffer"] = buf
        return param - lr * buf, new_state
    return param - lr * g / avg, new_state


def adam(param, grad, state, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
         amsgrad=False, maximize=False, decoupled=False):
    """Adam (decoupled=False: L2 weight decay added to the gradient) and AdamW (decoupled=True:
    the parameter itself shrinks by lr * weight_decay before the step).

        m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2          (amsgrad: v_t = max(v_max, v_t))
        p_t = p_{t-1} - lr / (1 - beta1^t) * m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)
    """
    beta1, beta2 = betas
    t = state.get("step", 0) + 1
    g = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled:
            param = param * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * param
    exp_avg = state.get("exp_avg", np.zeros_like(param))
    exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)
    exp_avg_sq = beta2 * state.get("exp_avg_sq", np.zeros_like(param)) + (1 - beta2) * g * g
    new_state = {"step": t, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    v = exp_avg_sq
    if amsgrad:
        v = np.maximum(state.get("max_exp_avg_sq", np.zeros_like(param)), exp_avg_sq)
        new_state["max_exp_avg_sq"] = v
    step_size = lr / (1 - beta1 ** t)
    denom = np.sqrt(v) / math.sqrt(1 - beta2 ** t) + eps
    return param - step_size * exp_avg / denom, new_state


def adamw(param, grad, state, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
          amsgrad=False, maximize=False):
    """AdamW: Adam with decoupled weight decay (see adam)."""
    return adam(param, grad, state, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                amsgrad=amsgrad, maximize=maximize, decoupled=True)


def ema(avg, x, decay):
    """One exponential-moving-average update: decay * avg + (1 - decay) * x."""
    return decay * avg + (1 - decay) * x


def total_norm(grads, norm_type=2.0):
    """The norm of all gradients together, as if concatenated into one vector."""
    flat = np.concatenate([np.abs(np.asarray(g, dtype=np.float64)).ravel() for g in grads]) if grads \
        else np.zeros(0)
    if flat.size == 0:
        return 0.0
    if norm_type == math.inf:
        return float(flat.max())
    if norm_type == -math.inf:
        return float(flat.min())
    if norm_type == 0:
        return float(np.count_nonzero(flat))
    return float(np.sum(flat ** norm_type) ** (1.0 / norm_type))


def clip_coef(total, max_norm):
    """The factor clip_grad_norm_ multiplies every gradient by: min(1, max_norm / (total + 1e-6))."""
    c = max_norm / (total + 1e-6)
    return 1.0 if c > 1.0 else c
