"""Concurrent calls from several Python threads, whatever Numba's threading layer.

Numba's ``workqueue`` layer aborts the process when two threads launch parallel kernels
at once; pyopt's CPU launchers then run one at a time under one lock
(``kernels/cpu/_launch.py``), and take no lock at all under the thread-safe layers.
"""

from __future__ import annotations

import getpass
import inspect
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest

import pyopt
from pyopt.kernels.cpu import _launch
from pyopt.kernels.cpu import batchnorm as cpu_batchnorm
from pyopt.kernels.cpu import clip as cpu_clip
from pyopt.kernels.cpu import optim as cpu_optim
from pyopt.kernels.cpu import random as cpu_random

# Numba's cache for the subprocesses: theirs alone, and kept between runs, so only the
# first run on a machine compiles the kernels (about 20 s on 2 cores); later ones load them.
_CACHE = Path(tempfile.gettempdir()) / f"pyopt-test-threads-{getpass.getuser()}"

# Each of THREADS threads repeats its job ROUNDS times and compares every result with the
# same job run serially first. Small shapes: the kernels take microseconds, so launches
# from different threads overlap all the time (without the lock, workqueue aborts at once).
_WORKER = textwrap.dedent(
    """
    import json, threading
    import numpy as np
    import numba
    import pyopt
    from pyopt import functional as F, optim
    from pyopt.kernels.cpu import _launch

    THREADS, ROUNDS = 4, 40
    decided_at_import = _launch._serialize is not None

    def job(k):
        rng = np.random.default_rng(k)
        x = rng.standard_normal((3, 5, 40)).astype(np.float32)
        w, b = rng.standard_normal((2, 5)).astype(np.float32)
        rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
        y, mean, invstd = F.batch_norm(
            x, weight=w, bias=b, running_mean=rm, running_var=rv, training=True
        )
        dy = rng.standard_normal(x.shape).astype(np.float32)
        out = [y, mean, invstd, rm, rv]
        out += F.batch_norm_backward(dy, x, weight=w, mean=mean, invstd=invstd)
        out.append(F.dropout(x, 0.3, seed=k))
        params = [rng.standard_normal(s).astype(np.float32) for s in ((7, 3), (11,))]
        opt = optim.Adam(params, lr=1e-2)
        for _ in range(3):
            grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
            out.append(np.float64(pyopt.clip_grad_norm_(grads, 1.0)))
            opt.step(grads)
        return out + params + grads

    serial = [job(k) for k in range(THREADS)]
    mismatches = []

    def run(k):
        for r in range(ROUNDS):
            for i, (a, b) in enumerate(zip(job(k), serial[k], strict=True)):
                if not np.array_equal(a, b):
                    mismatches.append((k, r, i))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({
        "layer": numba.threading_layer(),
        "serialize": _launch._serialize,
        "decided_at_import": decided_at_import,
        "mismatches": mismatches,
    }))
    """
)


@pytest.mark.parametrize("layer", ["workqueue", None], ids=["workqueue", "default"])
def test_concurrent_calls_equal_serial_ones(layer):
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "NUMBA_CACHE_DIR": str(_CACHE)}
    env.pop("NUMBA_THREADING_LAYER", None)
    if layer is not None:
        env["NUMBA_THREADING_LAYER"] = layer
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["mismatches"] == []
    assert not report["decided_at_import"], "import pyopt must not start Numba's threads"
    if layer is not None:
        assert report["layer"] == layer
    assert report["serialize"] == (report["layer"] not in ("tbb", "omp"))


# Functions of the CPU kernel modules that launch nothing (sizes of the launchers' outputs;
# optim.kernel, the generated kernel of a rule and storage).
_NOT_LAUNCHERS = {"norm_partials_blocks", "kernel"}


@pytest.mark.parametrize("module", [cpu_batchnorm, cpu_optim, cpu_clip, cpu_random])
def test_every_cpu_launcher_goes_through_the_launch_lock(module):
    public = {
        name: fn
        for name, fn in inspect.getmembers(module, inspect.isfunction)
        if not name.startswith("_") and fn.__module__ == module.__name__
    }
    assert public, module.__name__
    unwrapped = {
        name
        for name, fn in public.items()
        if getattr(fn, "__wrapped__", None) is None and name not in _NOT_LAUNCHERS
    }
    assert not unwrapped, f"launchers not wrapped by parallel_launcher: {sorted(unwrapped)}"


class _NoLock:
    def __enter__(self):
        raise AssertionError("the launch lock was taken under a thread-safe threading layer")

    def __exit__(self, *exc):
        return False


def test_thread_safe_layers_take_no_lock(monkeypatch):
    x = np.ones(10, np.float32)
    cpu_clip.scale_(x, 2.0)  # learns the layer if no launch has yet
    if numba.threading_layer() not in ("tbb", "omp"):
        assert _launch._serialize is True
        pytest.skip(f"this process runs the {numba.threading_layer()} layer, not a thread-safe one")
    assert _launch._serialize is False
    monkeypatch.setattr(_launch, "_LOCK", _NoLock())
    cpu_clip.scale_(x, 2.0)
    pyopt.clip_grad_norm_([x], 1.0)
    np.testing.assert_allclose(np.linalg.norm(x), 1.0, rtol=1e-5)


def test_serialized_launches_take_the_lock(monkeypatch):
    taken = []

    class Recording:
        def __enter__(self):
            taken.append(True)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(_launch, "_serialize", True)
    monkeypatch.setattr(_launch, "_LOCK", Recording())
    x = np.ones(10, np.float32)
    cpu_clip.scale_(x, 2.0)
    assert taken == [True]
    np.testing.assert_array_equal(x, 2.0)
