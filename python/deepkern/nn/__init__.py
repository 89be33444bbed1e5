"""deepkern.nn: layers with explicit forward and backward (no autograd engine)."""

from .parameter import Parameter

__all__ = ["Parameter"]
