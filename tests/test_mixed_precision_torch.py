"""Mixed precision through pyopt.torch: bfloat16/float16 models with master weights,
bfloat16 state, stochastic rounding and ``torch.amp.GradScaler``, on torch CPU tensors."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pyopt.torch import optim  # noqa: E402
from pyopt.torch._tensors import as_array, as_tensor  # noqa: E402

RULES = {
    "Adam": {"lr": 1e-2, "weight_decay": 0.1},
    "AdamW": {"lr": 1e-2, "amsgrad": True},
    "SGD": {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    "Adagrad": {"lr": 0.05},
    "RMSprop": {"lr": 1e-2, "centered": True, "momentum": 0.5},
    "Adadelta": {"lr": 0.5},
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _model(dtype, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(13, 31), torch.nn.Tanh(), torch.nn.Linear(31, 3))
    return model.to(dtype)


def _backward(model, seed, scaler=None):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(17, 13, generator=generator).to(next(model.parameters()).dtype)
    loss = model(x).float().square().mean()
    (loss if scaler is None else scaler.scale(loss)).backward()


def _same_bits(a, b):
    word = {2: torch.int16, 4: torch.int32}[a.element_size()]
    return a.dtype == b.dtype and torch.equal(a.detach().view(word), b.detach().view(word))


def test_bfloat16_tensors_reach_the_kernels_zero_copy():
    t = torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16)
    arr = as_array(t)
    assert arr.dtype == ml_dtypes.bfloat16 and arr.tolist() == [1.5, -2.0, 3.25]
    arr[0] = 7
    assert t[0].item() == 7.0  # the same memory
    back = as_tensor(arr)
    assert back.dtype == torch.bfloat16 and back.data_ptr() == t.data_ptr()


@pytest.mark.parametrize("flatten", [True, False])
@pytest.mark.parametrize("fmt", DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_master_weights_are_the_float32_optimizer_rounded(rule, fmt, flatten):
    dtype = DTYPES[fmt]
    model = _model(dtype)
    shadow = [p.detach().float().clone().requires_grad_() for p in model.parameters()]
    opt = getattr(optim, rule)(
        model.parameters(), **RULES[rule], master_weights=True, flatten=flatten
    )
    ref = getattr(optim, rule)(shadow, **RULES[rule], flatten=flatten)
    for step in range(3):
        opt.zero_grad()
        ref.zero_grad()
        _backward(model, step)
        for p, q in zip(model.parameters(), shadow, strict=True):
            q.grad = p.grad.float()
        opt.step()
        ref.step()
        for p, q in zip(model.parameters(), shadow, strict=True):
            assert _same_bits(p, q.to(dtype)), f"step {step}"
    first = next(model.parameters())
    assert opt.state[first]["master_param"].dtype == torch.float32
    assert _same_bits(opt.state[first]["master_param"], shadow[0])
    if rule != "SGD":
        state = next(v for k, v in opt.state[first].items() if k not in ("step", "master_param"))
        assert state.dtype == torch.float32  # the default state dtype of 16-bit params


def test_state_dtype_bfloat16_and_the_state_dict_keep_every_dtype():
    model = _model(torch.bfloat16)
    opt = optim.AdamW(model.parameters(), lr=1e-2, master_weights=True, state_dtype="bfloat16")
    for step in range(2):
        opt.zero_grad()
        _backward(model, step)
        opt.step()
    saved = opt.state_dict()
    entry = saved["state"][0]
    assert entry["exp_avg"].dtype == torch.bfloat16 and entry["master_param"].dtype == torch.float32
    twin_model = _model(torch.bfloat16)
    twin_model.load_state_dict(model.state_dict())
    twin = optim.AdamW(
        twin_model.parameters(), lr=1e-2, master_weights=True, state_dtype="bfloat16"
    )
    twin.load_state_dict(saved)  # torch's load would round the float32 masters to bfloat16
    first = next(twin_model.parameters())
    assert _same_bits(twin.state[first]["master_param"], entry["master_param"])
    for o, m in ((opt, model), (twin, twin_model)):
        o.zero_grad()
        _backward(m, 5)
        o.step()
    for p, q in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert _same_bits(p, q)
    torch_adamw = torch.optim.AdamW(_model(torch.bfloat16).parameters(), lr=1e-2)
    torch_adamw.load_state_dict(saved)  # the format stays torch's


def test_stochastic_rounding_is_the_same_through_flat_buffers_and_param_by_param():
    results = []
    for flatten, seed in ((True, 3), (False, 3), (True, 4)):
        model = _model(torch.bfloat16)
        opt = optim.SGD(
            model.parameters(), lr=1e-3, stochastic_rounding=True, seed=seed, flatten=flatten
        )
        for step in range(3):
            opt.zero_grad()
            _backward(model, step)
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    flat, separate, other_seed = results
    assert all(_same_bits(a, b) for a, b in zip(flat, separate, strict=True))
    assert not all(_same_bits(a, b) for a, b in zip(flat, other_seed, strict=True))


def test_grad_scaler_drives_a_float16_model():
    """torch's unscale_ refuses float16 grads; pyopt's optimizers take the scale into the
    update pass (``_step_supports_amp_scaling``), and an inf gradient skips the step."""
    model, plain = _model(torch.float16), _model(torch.float16)
    opt = optim.Adam(model.parameters(), lr=1e-2, master_weights=True)
    ref = optim.Adam(plain.parameters(), lr=1e-2, master_weights=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)
    for step in range(3):
        opt.zero_grad()
        ref.zero_grad()
        _backward(model, step, scaler)
        _backward(plain, step)
        scaler.step(opt)
        scaler.update()
        ref.step()
        assert not opt.last_step.skipped
        for p, q in zip(model.parameters(), plain.parameters(), strict=True):
            assert _same_bits(p, q)  # a power-of-two scale unscales exactly
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    _backward(model, 9, scaler)
    next(model.parameters()).grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert opt.last_step.skipped and scaler.get_scale() == 512.0
    assert all(_same_bits(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_bad_precision_options_name_the_argument():
    params = _model(torch.bfloat16).parameters()
    with pytest.raises(ValueError, match="not both"):
        optim.Adam(params, master_weights=True, stochastic_rounding=True)
    with pytest.raises(TypeError, match="state_dtype"):
        optim.Adam(_model(torch.float64).parameters(), state_dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="state_dtype must be"):
        optim.Adam(_model(torch.bfloat16).parameters(), state_dtype="float16")


def test_numpy_ml_dtypes_state_matches_torch_bfloat16():
    """The CPU view of a bfloat16 tensor is the same bits as torch's bfloat16."""
    values = torch.randn(1000).to(torch.bfloat16)
    np.testing.assert_array_equal(
        as_array(values).view(np.uint16), values.view(torch.int16).numpy().view(np.uint16)
    )
