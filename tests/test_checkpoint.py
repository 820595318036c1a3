"""pyopt.save / pyopt.load: exact round trips, atomic writes, no pickle, and optimizer runs
resumed in a fresh process continuing bit for bit."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import CUDASIM, cuda_skip_reason

import pyopt
from pyopt import optim

TESTS = Path(__file__).parent


def test_round_trip_is_exact(tmp_path):
    obj = {
        "state": {0: {"step": 7, "exp_avg": np.arange(6, dtype=np.float32).reshape(2, 3)}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0], "name": "x"}],
        "floats": [math.inf, -math.inf, 1 / 3, -0.0, 5e-324],
        "misc": (None, True, False, 2**70, "ü"),
        "arrays": [np.zeros(0), np.array(2.5), np.array([1, 2], np.int64)],
        "nan": math.nan,
    }
    path = tmp_path / "ck.pyopt"
    pyopt.save(path, obj)
    back = pyopt.load(path)
    assert back["state"][0]["step"] == 7 and list(back["state"]) == [0]
    np.testing.assert_array_equal(back["state"][0]["exp_avg"], obj["state"][0]["exp_avg"])
    assert back["state"][0]["exp_avg"].dtype == np.float32
    assert back["param_groups"] == obj["param_groups"]
    assert isinstance(back["param_groups"][0]["betas"], tuple)
    assert back["floats"][:2] == [math.inf, -math.inf]
    assert back["floats"][2] == 1 / 3 and math.copysign(1, back["floats"][3]) == -1
    assert back["floats"][4] == 5e-324
    assert back["misc"] == obj["misc"]
    for a, b in zip(back["arrays"], obj["arrays"], strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert math.isnan(back["nan"])


def test_file_is_a_documented_zip_without_pickle(tmp_path):
    path = tmp_path / "ck.pyopt"
    pyopt.save(path, {"w": np.ones(3)})
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["arrays/0.npy", "pyopt.json"]
        manifest = json.loads(archive.read("pyopt.json"))
        assert manifest["format"] == "pyopt-checkpoint" and manifest["version"] == 1
        with archive.open("arrays/0.npy") as f:
            np.testing.assert_array_equal(np.load(f, allow_pickle=False), np.ones(3))


def test_unstorable_objects_are_refused_and_nothing_is_written(tmp_path):
    path = tmp_path / "ck.pyopt"
    with pytest.raises(TypeError, match=r"obj\['bad'\]"):
        pyopt.save(path, {"bad": object()})
    with pytest.raises(TypeError, match="object array"):
        pyopt.save(path, {"bad": np.array([None, 1], dtype=object)})
    assert list(tmp_path.iterdir()) == []


def test_a_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pyopt"
    pyopt.save(path, {"version": 1, "w": np.ones(4)})
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", crash)
    with pytest.raises(OSError, match="disk full"):
        pyopt.save(path, {"version": 2, "w": np.zeros(4)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pyopt"], "no temporary file is left"
    assert pyopt.load(path)["version"] == 1


def test_load_rejects_files_that_are_not_checkpoints(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a pyopt checkpoint"):
        pyopt.load(junk)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("pyopt.json", json.dumps({"format": "pyopt-checkpoint", "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        pyopt.load(other)


# --- resuming in a fresh process --------------------------------------------------

_RUN = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        import _cudasim
        _cudasim.install()
    import pyopt
    from pyopt import optim
    from pyopt._backend import copy_into, to_numpy

    name, kwargs, device = {name!r}, {kwargs!r}, {device!r}
    start, stop, path = {start}, {stop}, {path!r}
    shapes = [(3, 5), (7,), (1,), (33,)]
    buf = optim.ParamBuffer(shapes, dtype=np.float32, device=device)
    rng = np.random.default_rng(0)
    buf.load({{str(i): rng.standard_normal(s) for i, s in enumerate(shapes)}})
    opt = getattr(optim, name)(buf.params, **kwargs)
    if start:
        saved = pyopt.load(path)
        opt.load_state_dict(saved["optimizer"])
        buf.load(saved["params"])
    for t in range(start, stop):
        noise = np.random.default_rng([1, t])
        for i, s in enumerate(shapes):
            p = to_numpy(buf.params[str(i)])
            g = noise.standard_normal(s).astype(np.float32) + np.float32(0.5) * p
            copy_into(buf.grads[str(i)], g)
        opt.step(buf.grads, max_grad_norm=2.0)
    params = {{k: to_numpy(v) for k, v in buf.params.items()}}
    pyopt.save(path, {{"optimizer": opt.state_dict(), "params": params}})
    """
)

RESUME_CASES = [
    ("Adam", {"lr": 1e-2, "amsgrad": True}),
    ("AdamW", {"lr": 1e-2}),
    ("SGD", {"lr": 1e-2, "momentum": 0.9, "nesterov": True}),
    ("Adagrad", {"lr": 1e-2, "lr_decay": 1e-3}),
    ("RMSprop", {"lr": 1e-3, "centered": True, "momentum": 0.5}),
    ("Adadelta", {"weight_decay": 1e-2}),
]


def _run(tmp_path, device, name, kwargs, start, stop, path):
    code = _RUN.format(
        tests=str(TESTS),
        name=name,
        kwargs=kwargs,
        device=device,
        start=start,
        stop=stop,
        path=str(path),
    )
    env = dict(os.environ)
    if device == "cuda" and CUDASIM:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)


# Every rule on the CPU; on CUDA (three processes of simulator start-up each) the two
# whose state has the most parts: the save/load path is the same for all rules.
RESUME_RUNS = [("cpu", *case) for case in RESUME_CASES] + [
    pytest.param("cuda", *RESUME_CASES[0], marks=pytest.mark.sim),
    pytest.param("cuda", *RESUME_CASES[4], marks=pytest.mark.sim),
]


@pytest.mark.parametrize(("device", "name", "kwargs"), RESUME_RUNS)
def test_resume_in_a_fresh_process_is_bit_for_bit(tmp_path, device, name, kwargs):
    if device == "cuda" and cuda_skip_reason() is not None:
        pytest.skip(cuda_skip_reason())
    steps = 6 if device == "cuda" else 20
    whole, part = tmp_path / "whole.pyopt", tmp_path / "part.pyopt"
    _run(tmp_path, device, name, kwargs, 0, steps, whole)
    _run(tmp_path, device, name, kwargs, 0, steps // 2, part)
    _run(tmp_path, device, name, kwargs, steps // 2, steps, part)
    a, b = pyopt.load(whole), pyopt.load(part)
    for key in a["params"]:
        np.testing.assert_array_equal(a["params"][key], b["params"][key])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and sa
    for i in sa:
        assert sa[i]["step"] == sb[i]["step"] == steps
        for key in sa[i]:
            np.testing.assert_array_equal(sa[i][key], sb[i][key])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]


def test_optimizer_state_dict_saves_and_loads(tmp_path):
    params = [np.ones((2, 2), np.float32), np.zeros(3, np.float32)]
    opt = optim.RMSprop(params, centered=True, momentum=0.9)
    opt.step([np.full((2, 2), 0.5, np.float32), np.ones(3, np.float32)])
    pyopt.save(tmp_path / "o.pyopt", opt.state_dict())
    other = optim.RMSprop([p.copy() for p in params], centered=True, momentum=0.9)
    other.load_state_dict(pyopt.load(tmp_path / "o.pyopt"))
    for i, entry in opt.state_dict()["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(other.state_dict()["state"][i][key], value)
