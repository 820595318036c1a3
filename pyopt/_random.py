"""pyopt's random streams: Philox4x32-10 keyed by (seed, offset), and the global generator.

Every random kernel (dropout masks, ``pyopt.init``) draws element ``i`` of a call from
``philox4x32_10(counter=(i // 4, offset), key=seed)``, lane ``i % 4``
(``kernels/philox.py``): a pure function of ``(seed, offset, i)``, so the CPU and CUDA
kernels produce the same stream, and a dropout backward regenerates its forward's mask
instead of storing it. Calls that are given no seed take the global generator's seed and
its next offset; :func:`manual_seed` resets it, as ``torch.manual_seed`` does.
"""

from __future__ import annotations

import numbers
import threading
from typing import Any

import numpy as np

_U64 = 1 << 64
# As torch's default generator, the global one starts from a fixed seed: a fresh process is
# reproducible without a manual_seed call.
_DEFAULT_SEED = 67280421310721


class _Generator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seed = _DEFAULT_SEED
        self.offset = 0
        self.derived = 0

    def next_key(self) -> tuple[int, int]:
        """``(seed, offset)`` for one call: the offset is used once."""
        with self._lock:
            offset = self.offset
            self.offset = (offset + 1) % _U64
            return self.seed, offset

    def derive_seed(self) -> int:
        """A fresh 64-bit seed for an object that keeps its own stream (``Dropout``)."""
        with self._lock:
            index = self.derived
            self.derived += 1
            seed = self.seed
        words = np.random.SeedSequence([seed % _U64, index]).generate_state(2, np.uint32)
        return int(words[0]) | int(words[1]) << 32


_GLOBAL = _Generator()


def check_u64(name: str, value: Any) -> int:
    """``value`` as an int in ``[0, 2**64)``; TypeError / ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value < _U64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return value


def manual_seed(seed: int) -> None:
    """Seed pyopt's global generator (used where no ``seed=`` is given), like
    ``torch.manual_seed``: initializers and new ``Dropout`` layers created after the
    same ``manual_seed`` call draw the same values.

    Args:
        seed: an int in ``[-2**63, 2**64)``; negative seeds wrap modulo 2**64 as in torch.

    Example:
        >>> import numpy as np, pyopt
        >>> pyopt.manual_seed(0)
        >>> a = pyopt.init.normal_(np.empty(3))
        >>> pyopt.manual_seed(0)
        >>> bool((pyopt.init.normal_(np.empty(3)) == a).all())
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not -(1 << 63) <= seed < _U64:
        raise ValueError(f"seed must be in [-2**63, 2**64), got {seed}")
    with _GLOBAL._lock:
        _GLOBAL.seed = seed % _U64
        _GLOBAL.offset = 0
        _GLOBAL.derived = 0


def key_for(seed: Any) -> tuple[int, int]:
    """``(seed, offset)`` for a call given ``seed`` (offset 0), or the global next key."""
    if seed is None:
        return _GLOBAL.next_key()
    return check_u64("seed", seed), 0


def derive_seed() -> int:
    return _GLOBAL.derive_seed()
