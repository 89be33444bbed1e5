"""Losses: CrossEntropyLoss, the fused log-softmax + negative log-likelihood of classifiers."""

from __future__ import annotations

from . import functional as NF
from .module import Module

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss(Module):
    """Cross-entropy between softmax(logits) and the targets, with label smoothing.

        crit = nn.CrossEntropyLoss(label_smoothing=0.1)
        loss = crit(logits, targets)      # a Python float ('mean' or 'sum')
        grad_logits = crit.backward()     # (N, C), the logits' dtype

    logits: (N, C) float32 or float64; targets: (N,) integer class indices in [0, C), or
    (N, C) class probabilities. ``label_smoothing`` eps mixes each target with the uniform
    distribution: (1 - eps) * target + eps / C (PyTorch's definition). ``weight`` (C,)
    weighs the classes, ``ignore_index`` rows are left out, ``reduction`` is 'mean', 'sum' or
    'none' (then forward returns an (N,) array and backward takes an optional (N,) gradient).
    The math is in ``deepkern.nn.functional``. Differences from PyTorch: the loss is a
    Python float, and options after ``weight`` are keyword-only (PyTorch's positional
    ``size_average`` and ``reduce`` are long deprecated).
    """

    def __init__(self, weight=None, *, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__()
        self.label_smoothing = NF._check_options(reduction, label_smoothing, ignore_index)
        self.reduction = reduction
        self.ignore_index = int(ignore_index)
        self.register_buffer("weight", weight)        # as PyTorch: part of the state_dict
        self._saved = None

    def forward(self, logits, targets):
        eps = NF._check_options(self.reduction, self.label_smoothing, self.ignore_index)
        loss, self._saved = NF._forward(logits, targets, self.weight, self.ignore_index, self.reduction, eps)
        return loss

    def backward(self, grad_output=None):
        """The gradient of the last loss with respect to its logits."""
        if self._saved is None:
            raise RuntimeError("CrossEntropyLoss.backward() called before forward()")
        return NF._backward(self._saved, grad_output)

    def extra_repr(self):
        s = f"reduction={self.reduction!r}"
        if self.label_smoothing:
            s += f", label_smoothing={self.label_smoothing}"
        if self.weight is not None:
            s += ", weight=..."
        return s
