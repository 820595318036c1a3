"""Launch plumbing shared by the CPU launchers: one lock where the threading layer needs it.

Numba's ``workqueue`` threading layer (the one it falls back to where neither TBB nor
OpenMP loads) is not thread-safe: two Python threads launching ``parallel=True`` kernels
at once abort the process ("Concurrent access has been detected"). Every launcher the
public layer calls (``batch_norm_forward``, ``adam_update``, ``dropout``, ...) is wrapped
by :func:`parallel_launcher`, which runs it under one process-wide lock when the layer is
not thread-safe and calls it directly when it is (``tbb``, ``omp``: Numba's "threadsafe"
layers). The layer is learned once, at the first launch: after that the check is one
global read, and where the layer is thread-safe no lock is ever taken.
"""

import functools
import threading
from collections.abc import Callable
from typing import Any

import numba

# Numba's "threadsafe" category of threading layers.
_THREADSAFE_LAYERS = frozenset({"tbb", "omp"})
_LOCK = threading.Lock()
# Whether launches take _LOCK: None until the first launch names the threading layer.
_serialize: bool | None = None


def _learn_layer() -> bool:
    """Whether the process's threading layer needs launches serialized.

    ``numba.get_num_threads()`` starts the layer (under Numba's own lock) if no parallel
    kernel has yet, exactly as the launch about to happen would: a layer chosen through
    ``NUMBA_THREADING_LAYER`` or ``numba.config.THREADING_LAYER`` is the one named.
    """
    global _serialize
    numba.get_num_threads()
    _serialize = numba.threading_layer() not in _THREADSAFE_LAYERS
    return _serialize


def parallel_launcher(launcher: Callable[..., Any]) -> Callable[..., Any]:
    """``launcher`` (a function that calls ``parallel=True`` kernels), safe to call from
    several Python threads at once whatever Numba's threading layer.

    Args:
        launcher: the launcher to wrap.

    Returns:
        A function of the same signature and docstring.
    """

    @functools.wraps(launcher)
    def launch(*args: Any, **kwargs: Any) -> Any:
        serialize = _serialize if _serialize is not None else _learn_layer()
        if not serialize:
            return launcher(*args, **kwargs)
        with _LOCK:
            return launcher(*args, **kwargs)

    return launch
