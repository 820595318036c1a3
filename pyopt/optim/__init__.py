"""Optimizers with torch.optim's names, defaults and update rules, on fused kernels.

Each step is one kernel call per run of params that lie end to end in memory: build the
model on a :class:`ParamBuffer` and a step is one call (one CUDA launch) per group and
dtype. ``step`` fuses global-norm clipping, loss-scale division and the non-finite check
into the update.
"""

from pyopt.optim import lr_scheduler
from pyopt.optim._algorithms import SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop
from pyopt.optim._optimizer import Optimizer, StepResult
from pyopt.optim._param_buffer import ParamBuffer

__all__ = [
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Optimizer",
    "ParamBuffer",
    "RMSprop",
    "StepResult",
    "lr_scheduler",
]
