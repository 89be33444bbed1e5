"""deepkern.optim: optimizers whose whole step is one fused C++ pass over memory.

    opt = deepkern.optim.Adam(model.parameters(), lr=1e-3)
    ...backward fills p.grad...
    opt.step()                       # every parameter, every state buffer: one pass
    opt.zero_grad()

SGD, Momentum, NAG, Adagrad, Adadelta, RMSprop, Adam, AdamW follow torch.optim's semantics,
defaults and state_dict layout step for step (each class's docstring gives its equations and
how they relate to the textbook forms; ``deepkern.optim.reference`` has them in NumPy).
Also here: ``lr_scheduler`` (StepLR, CosineAnnealingLR, CosineAnnealingWarmRestarts,
ReduceLROnPlateau), ``EMA`` (Polyak averaging), ``fused_step`` (clip + step + EMA in two
passes) and ``save_state``/``load_state`` (state dicts as .npz).
"""

from . import lr_scheduler, reference
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .ema import EMA
from .fused import fused_step
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .serialization import load_state, save_state
from .sgd import NAG, SGD, Momentum

__all__ = [
    "Optimizer", "SGD", "Momentum", "NAG", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW", "EMA",
    "fused_step", "lr_scheduler", "reference", "save_state", "load_state",
]
