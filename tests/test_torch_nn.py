"""pyopt.torch.nn and pyopt.torch.functional against torch's batch norm and dropout: outputs,
gradients, running statistics, layouts, state dicts, gradcheck, dropout's mask-free
backward, replace_modules, and bad inputs that change nothing."""

import math

import pytest

torch = pytest.importorskip("torch", reason="pyopt.torch needs torch (the extra 'torch')")

import pyopt.torch.functional as PF  # noqa: E402
import pyopt.torch.nn as pnn  # noqa: E402

TORCH_BN = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}
OURS_BN = {1: pnn.BatchNorm1d, 2: pnn.BatchNorm2d, 3: pnn.BatchNorm3d}
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _layout(tensor, layout):
    """``tensor``'s values in ``layout``: "nchw" (contiguous), "channels_last" (C
    innermost: torch.channels_last for 4D, channels_last_3d for 5D, a transpose
    otherwise), or "strided" (a view with gaps, which the kernels read through a copy)."""
    if layout == "nchw":
        return tensor.contiguous()
    if layout == "channels_last":
        order = (0, *range(2, tensor.dim()), 1)
        inverse = sorted(range(tensor.dim()), key=order.__getitem__)
        return tensor.permute(order).contiguous().permute(inverse)
    assert layout == "strided"
    wide = torch.zeros(*tensor.shape[:-1], 2 * tensor.shape[-1], dtype=tensor.dtype)
    wide[..., ::2] = tensor
    return wide[..., ::2]


def _other_layout(tensor):
    """``tensor``'s values with the batch axis innermost: a layout no input here has."""
    return tensor.transpose(0, -1).contiguous().transpose(0, -1)


def assert_close(actual, expected, dtype):
    """Equal to ``RTOL[dtype]`` relative to the scale of ``expected``."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    rtol = RTOL[dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1.0))


# (kind, shape, layout): sizes 1, primes, 1023/1025 per channel, 1023 channels, an empty
# batch; BatchNorm1d with 2D and 3D inputs; every layout the functional distinguishes.
BN_CASES = [
    (1, (2, 5), "nchw"),
    (1, (1025, 3), "nchw"),
    (1, (3, 7, 1023), "nchw"),
    (1, (1, 4, 5), "nchw"),
    (1, (4, 5, 11), "channels_last"),
    (1, (0, 3, 4), "nchw"),
    (2, (4, 3, 7, 11), "nchw"),
    (2, (4, 3, 7, 11), "channels_last"),
    (2, (2, 1023, 2, 1), "channels_last"),
    (2, (1, 1, 31, 33), "channels_last"),
    (2, (3, 5, 6, 4), "strided"),
    (3, (2, 3, 5, 7, 3), "nchw"),
    (3, (2, 3, 5, 7, 3), "channels_last"),
]
BN_CONFIGS = {
    "default": {},
    "momentum_none": {"momentum": None},
    "no_affine": {"affine": False},
    "no_bias": {"bias": False},  # torch's keyword-only bias: a scale without a shift
    "no_tracking": {"track_running_stats": False},
    "momentum_eps": {"momentum": 0.3, "eps": 1e-3},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("config", BN_CONFIGS)
@pytest.mark.parametrize(
    "kind,shape,layout",
    BN_CASES,
    ids=[f"{k}d-{'x'.join(map(str, s))}-{ly}" for k, s, ly in BN_CASES],
)
def test_batch_norm_matches_torch(kind, shape, layout, config, dtype):
    """Two training steps and one eval step: output, its layout, the input, weight and
    bias gradients (from a gradient in another layout), running stats, batch count."""
    torch.manual_seed(0)
    channels = shape[1]
    ref = TORCH_BN[kind](channels, dtype=dtype, **BN_CONFIGS[config])
    if ref.weight is not None:  # non-trivial parameters and statistics on both sides
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            if ref.bias is not None:
                ref.bias.uniform_(-0.5, 0.5)
    ours = OURS_BN[kind](channels, dtype=dtype, **BN_CONFIGS[config])
    ours.load_state_dict(ref.state_dict())
    for training in (True, True, False):
        ref.train(training)
        ours.train(training)
        x = _layout(torch.randn(shape, dtype=dtype) * 2 + 0.5, layout)
        grad = _other_layout(torch.randn(shape, dtype=dtype))
        x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ref, y_ours = ref(x_ref), ours(x_ours)
        y_ref.backward(grad)
        y_ours.backward(grad)
        assert_close(y_ours, y_ref, dtype)
        assert_close(x_ours.grad, x_ref.grad, dtype)
        if len(shape) >= 4 and layout != "strided":
            fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
            assert y_ours.is_contiguous(memory_format=fmt) == y_ref.is_contiguous(memory_format=fmt)
            assert x_ours.grad.is_contiguous(memory_format=fmt) == x.is_contiguous(
                memory_format=fmt
            )
        for name in ("weight", "bias"):
            if getattr(ref, name) is None:
                assert getattr(ours, name) is None
            else:
                assert_close(getattr(ours, name).grad, getattr(ref, name).grad, dtype)
        for name, value in ref.named_buffers():
            torch.testing.assert_close(
                dict(ours.named_buffers())[name], value, rtol=RTOL[dtype], atol=RTOL[dtype]
            )
        assert dict(ours.named_buffers()).keys() == dict(ref.named_buffers()).keys()


@pytest.mark.parametrize(
    "layout,shares_input",
    [("nchw", True), ("channels_last", True), ("strided", False)],
)
def test_batch_norm_zero_copy_and_saved_tensors(layout, shares_input):
    """The kernels read a gap-free input in place and update the buffers in place; backward
    keeps only what torch keeps: the input, weight, and per-channel mean and invstd."""
    bn = pnn.BatchNorm2d(3)
    mean_ptr, var_ptr = bn.running_mean.data_ptr(), bn.running_var.data_ptr()
    x = _layout(torch.randn(4, 3, 5, 6) + 1.0, layout).requires_grad_()
    y = bn(x)
    saved = y.grad_fn.saved_tensors
    assert len(saved) == 4
    assert (saved[0].data_ptr() == x.data_ptr()) == shares_input
    assert saved[1].data_ptr() == bn.weight.data_ptr()
    assert [tuple(t.shape) for t in saved[2:]] == [(3,), (3,)]
    assert (bn.running_mean.data_ptr(), bn.running_var.data_ptr()) == (mean_ptr, var_ptr)
    assert bn.running_mean.abs().min() > 0  # updated from zeros, in that memory


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("op", ["batch_norm", "dropout"])
def test_output_takes_inplace_ops(op, layout):
    """``y.relu_()`` on the output (ResNet's ReLU(inplace=True)) works and gives the
    gradients of the out-of-place ``relu``."""
    x = _layout(torch.randn(4, 3, 5, 6, dtype=torch.float64), layout)
    grads = []
    for relu in (torch.relu_, torch.relu):
        torch.manual_seed(0)
        xi = x.clone().requires_grad_()
        y = pnn.BatchNorm2d(3, dtype=torch.float64)(xi) if op == "batch_norm" else PF.dropout(xi)
        relu(y).pow(2).sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


@pytest.mark.parametrize("kind", [1, 2, 3])
@pytest.mark.parametrize("direction", ["torch_to_pyopt", "pyopt_to_torch"])
@pytest.mark.parametrize(
    "kwargs", [{"momentum": None}, {"affine": False}], ids=["mom_none", "no_affine"]
)
def test_state_dict_round_trip(kind, direction, kwargs):
    """A state dict loads either way with the same keys, and both modules then continue
    identically; the module API is torch's."""
    torch.manual_seed(0)
    shape = (4, 3, *(5,) * kind) if kind > 1 else (6, 3)
    src_cls, dst_cls = TORCH_BN[kind], OURS_BN[kind]
    if direction == "pyopt_to_torch":
        src_cls, dst_cls = dst_cls, src_cls
    src, dst = src_cls(3, **kwargs), dst_cls(3, **kwargs)
    for _ in range(2):
        src(torch.randn(shape))
    dst.load_state_dict(src.state_dict())
    assert list(dst.state_dict()) == list(src.state_dict())
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key
    x = torch.randn(shape)
    torch.testing.assert_close(dst(x), src(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dst.running_var, src.running_var, rtol=1e-6, atol=1e-6)
    assert isinstance(OURS_BN[kind](3), TORCH_BN[kind])
    assert repr(OURS_BN[kind](3, **kwargs)) == repr(TORCH_BN[kind](3, **kwargs))
    dst.reset_parameters()
    assert int(dst.num_batches_tracked) == 0 and float(dst.running_var.sum()) == 3.0


# (shape, layout, training, weight, bias): every path of the Function in float64.
GRADCHECK_CASES = [
    ((3, 2, 3, 2), "nchw", True, True, True),
    ((3, 2, 3, 2), "nchw", True, False, False),
    ((3, 2, 3, 2), "nchw", True, False, True),
    ((3, 2, 3, 2), "channels_last", True, True, True),
    ((3, 2, 3, 2), "channels_last", False, True, True),
    ((3, 2, 3, 2), "nchw", False, False, False),
    ((2, 2, 2, 3, 2), "channels_last", True, True, True),
    ((3, 4, 5), "channels_last", True, True, False),
]


@pytest.mark.parametrize("shape,layout,training,weight,bias", GRADCHECK_CASES)
def test_batch_norm_gradcheck(shape, layout, training, weight, bias):
    torch.manual_seed(0)
    opts = {"dtype": torch.float64, "requires_grad": True}
    x = _layout(torch.randn(shape, dtype=torch.float64), layout).requires_grad_()
    w = torch.rand(shape[1], **opts) + 0.5 if weight else None
    b = torch.randn(shape[1], **opts) if bias else None
    running_mean = torch.randn(shape[1], dtype=torch.float64)
    running_var = torch.rand(shape[1], dtype=torch.float64) + 0.5

    def fn(x, w, b):
        return PF.batch_norm(x, running_mean, running_var, w, b, training=training)

    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_functional_batch_norm_bias_without_weight():
    """weight=None with a bias: the bias still gets its gradient (sum of dy per channel)."""
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    grads = []
    for fn in (PF.batch_norm, torch.nn.functional.batch_norm):
        b = bias.clone().requires_grad_()
        fn(x, None, None, None, b, training=True).pow(2).sum().backward()
        grads.append(b.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_autocast_16bit_inputs_keep_their_dtype(dtype):
    """Under CPU autocast a 16-bit input goes to the 16-bit kernels (float32 inside) and
    comes back in its dtype, as torch returns it; the gradient comes back in that dtype
    too."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5).to(dtype)
    ref, ours = torch.nn.BatchNorm2d(3), pnn.BatchNorm2d(3)
    results = []
    for module in (ref, ours):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            y = module(xi)
            dropped = PF.dropout(xi, 0.5)
        y.float().pow(2).sum().backward()
        assert y.dtype == dropped.dtype == xi.grad.dtype == dtype
        results.append((y.float(), xi.grad.float()))
    for ours_value, ref_value in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours_value, ref_value, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_dropout_statistics(p, dtype):
    """About 1 - p of the elements kept (within 5 sigma), each scaled by 1 / (1 - p) as torch
    scales them."""
    n = 200_000
    x = torch.full((n,), 2.0, dtype=dtype)
    y = PF.dropout(x, p)
    kept = y != 0
    assert abs(kept.double().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    torch_scale = torch.nn.functional.dropout(x, p).max()
    torch.testing.assert_close(y[kept], torch_scale.expand(int(kept.sum())), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "shape,p,training,inplace",
    [
        ((5,), 0.5, False, False),
        ((5,), 0.0, True, False),
        ((0, 3), 0.5, True, False),
        ((5,), 0.5, False, True),
    ],
    ids=["eval", "p0", "empty", "eval_inplace"],
)
def test_dropout_returns_input_itself(shape, p, training, inplace):
    x = torch.randn(shape)
    assert PF.dropout(x, p, training, inplace) is x


def test_dropout_p1_zeroes_everything():
    x = torch.tensor([1.0, -2.0, math.inf, math.nan], requires_grad=True)
    y = PF.dropout(x, 1.0)
    y.sum().backward()
    assert torch.equal(y, torch.zeros(4)) and torch.equal(x.grad, torch.zeros(4))


def test_dropout_reproducible_under_manual_seed():
    x = torch.ones(1000)
    torch.manual_seed(123)
    first, second = PF.dropout(x), PF.dropout(x)
    torch.manual_seed(123)
    assert torch.equal(PF.dropout(x), first) and torch.equal(PF.dropout(x), second)
    assert not torch.equal(first, second)


@pytest.mark.parametrize(
    "shape,layout", [((1000,), "nchw"), ((4, 3, 6, 5), "channels_last"), ((7, 6, 5), "strided")]
)
def test_dropout_backward_uses_forward_mask(shape, layout):
    """dx = dy * mask / (1 - p) with the forward's mask, for a gradient in another layout;
    nothing saved for backward but seed, offset, p and the layout (no tensor)."""
    p = 0.3
    x = _layout(torch.rand(shape, dtype=torch.float64) + 1.0, layout).requires_grad_()
    y = PF.dropout(x, p)
    assert y.stride() == x.stride() or layout == "strided"
    assert y.grad_fn.saved_tensors == ()
    assert not [v for v in vars(y.grad_fn).values() if isinstance(v, torch.Tensor)]
    assert isinstance(y.grad_fn.seed, int) and isinstance(y.grad_fn.offset, int)
    grad = (
        _other_layout(torch.randn(shape, dtype=torch.float64))
        if len(shape) > 1
        else torch.randn(shape, dtype=torch.float64)
    )
    y.backward(grad)
    expected = torch.where(y != 0, grad / (1 - p), 0.0)
    torch.testing.assert_close(x.grad, expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(y, torch.where(y != 0, x / (1 - p), 0.0), rtol=1e-14, atol=0)


def test_dropout_inplace():
    """inplace=True writes into input and returns it, with the out-of-place values and
    gradient; on a leaf that requires grad it raises torch's error and writes nothing."""
    base = torch.rand(50) + 1.0
    torch.manual_seed(7)
    expected = PF.dropout(base, 0.4)
    leaf = base.clone().requires_grad_()
    hidden = leaf * 1.0
    torch.manual_seed(7)
    out = PF.dropout(hidden, 0.4, inplace=True)
    assert out is hidden and torch.equal(hidden.detach(), expected)
    out.sum().backward()
    torch.testing.assert_close(leaf.grad, torch.where(expected != 0, 1 / 0.6, 0.0))
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        PF.dropout(leaf, 0.4, inplace=True)
    assert torch.equal(leaf.detach(), base)


def test_dropout_gradcheck():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)

    def fn(x):
        torch.manual_seed(0)  # the same mask on every call
        return PF.dropout(x, 0.3)

    assert torch.autograd.gradcheck(fn, (x,))


def test_dropout_module():
    drop, ref = pnn.Dropout(0.25), torch.nn.Dropout(0.25)
    assert isinstance(drop, torch.nn.Dropout) and repr(drop) == repr(ref)
    x = torch.ones(10_000)
    assert 0.7 < (drop(x) != 0).float().mean().item() < 0.8
    assert drop.eval()(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        pnn.Dropout(1.5)


class _CustomBatchNorm(torch.nn.BatchNorm2d):
    """A user's subclass: replace_modules leaves it alone."""


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        _CustomBatchNorm(4),
        torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(64, 8),
            torch.nn.BatchNorm1d(8, momentum=None),
            torch.nn.Dropout(0.5).eval(),  # a training mode of its own, kept
            pnn.BatchNorm1d(8),
        ),
    ).double()


def test_replace_modules():
    """Exact torch types swapped in place, nested ones too; parameters, buffers and training
    modes kept; an optimizer built before keeps working; results as torch's."""
    model, ref = _model(), _model()
    params, buffers = list(model.parameters()), list(model.buffers())
    modes = [m.training for m in model.modules()]
    optimizer, ref_optimizer = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, ref))
    assert pnn.replace_modules(model) is model
    kinds = [type(m) for m in model.modules()]
    assert kinds[2] is pnn.BatchNorm2d and kinds[4] is _CustomBatchNorm
    assert kinds[8:11] == [pnn.BatchNorm1d, pnn.Dropout, pnn.BatchNorm1d]
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert all(a is b for a, b in zip(model.buffers(), buffers, strict=True))
    assert [m.training for m in model.modules()] == modes
    for _ in range(2):
        x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
        losses = []
        for m, opt in ((model, optimizer), (ref, ref_optimizer)):
            opt.zero_grad()
            loss = m(x).pow(2).sum()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-10)
    for (name, value), ref_value in zip(
        model.state_dict().items(), ref.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-10, msg=name)


def test_replace_modules_on_a_module_itself():
    bn = torch.nn.BatchNorm3d(2, dtype=torch.float64).eval()
    weight = bn.weight
    replaced = pnn.replace_modules(bn)
    assert type(replaced) is pnn.BatchNorm3d and replaced.weight is weight
    assert not replaced.training and replaced.weight.dtype == torch.float64


def _set(name, make):
    """A preparation that replaces the module's ``name`` with ``make(module)``."""
    return lambda bn: setattr(bn, name, make(bn))


# (call(bn, x), exception, message, preparation of bn): each must raise before it changes
# the module's state or x.
BAD_INPUTS = [
    pytest.param(
        lambda bn, x: bn(x.tolist()), TypeError, "input must be a torch.Tensor", None, id="list"
    ),
    pytest.param(lambda bn, x: bn(x.long()), TypeError, "input must be float32", None, id="int"),
    pytest.param(
        lambda bn, x: bn(x.to(torch.complex64)), TypeError, "input.*complex", None, id="complex"
    ),
    pytest.param(
        lambda bn, x: bn(x.to_sparse()), TypeError, "input must be a dense", None, id="sparse"
    ),
    pytest.param(
        lambda bn, x: bn(x.half()),
        TypeError,
        "running_mean has dtype float64 but must be float32 for float16 x",
        _set("running_mean", lambda bn: bn.running_mean.double()),
        id="float16_beside_float64_stats",
    ),
    pytest.param(
        lambda bn, x: bn(x[0]), ValueError, r"expected 4D input \(got 3D input\)", None, id="3d"
    ),
    pytest.param(
        lambda bn, x: bn(x[:, :2]),
        ValueError,
        r"weight must have shape \(2,\)",
        None,
        id="channels",
    ),
    pytest.param(
        lambda bn, x: bn(x[:1, :, :1, :1]),
        ValueError,
        "more than 1 value per channel",
        None,
        id="one_value",
    ),
    pytest.param(
        lambda bn, x: bn(x.double()), TypeError, "weight has dtype float32", None, id="input_dtype"
    ),
    pytest.param(
        lambda bn, x: bn(x),
        ValueError,
        "weight must have shape",
        _set("weight", lambda bn: torch.nn.Parameter(torch.ones(4))),
        id="weight_length",
    ),
    pytest.param(
        lambda bn, x: bn(x),
        TypeError,
        "running_mean has dtype float64",
        _set("running_mean", lambda bn: bn.running_mean.double()),
        id="running_mean_dtype",
    ),
    pytest.param(
        lambda bn, x: bn(x),
        ValueError,
        "running_var must have shape",
        _set("running_var", lambda bn: torch.ones(2)),
        id="running_var_length",
    ),
    pytest.param(
        lambda bn, x: PF.batch_norm(
            x, bn.running_mean, bn.running_var, training=True, momentum=None
        ),
        TypeError,
        "momentum",
        None,
        id="functional_momentum_none",
    ),
    pytest.param(
        lambda bn, x: PF.batch_norm(
            x, bn.running_mean, bn.running_var, training=True, momentum=1.5
        ),
        ValueError,
        "momentum",
        None,
        id="functional_momentum_range",
    ),
    pytest.param(
        lambda bn, x: PF.batch_norm(x, bn.running_mean, bn.running_var, training=True, eps=0.0),
        ValueError,
        "eps",
        None,
        id="functional_eps",
    ),
    pytest.param(
        lambda bn, x: PF.batch_norm(x, bn.running_mean, bn.running_var, training="yes"),
        TypeError,
        "training",
        None,
        id="functional_training",
    ),
    pytest.param(
        lambda bn, x: PF.batch_norm(x, bn.running_mean.long(), bn.running_var, training=True),
        TypeError,
        "running_mean must be float32",
        None,
        id="functional_int_stats",
    ),
    pytest.param(
        lambda bn, x: PF.batch_norm(x, bn.running_mean, bn.running_var, [1.0] * 3, training=True),
        TypeError,
        "weight must be a torch.Tensor",
        None,
        id="functional_weight_list",
    ),
    pytest.param(
        lambda bn, x: PF.batch_norm(x, None, None, training=False),
        ValueError,
        "running_mean and running_var are required",
        None,
        id="functional_eval_no_stats",
    ),
    pytest.param(
        lambda bn, x: PF.batch_norm(x[0, 0, 0], None, None, training=True),
        ValueError,
        "input must have rank >= 2",
        None,
        id="functional_rank1",
    ),
    pytest.param(
        lambda bn, x: PF.dropout(x, -0.1), ValueError, "between 0 and 1", None, id="p_negative"
    ),
    pytest.param(
        lambda bn, x: PF.dropout(x, 1.5, inplace=True),
        ValueError,
        "between 0 and 1",
        None,
        id="p_large",
    ),
    pytest.param(
        lambda bn, x: PF.dropout(x, math.nan), ValueError, "p must not be NaN", None, id="p_nan"
    ),
    pytest.param(
        lambda bn, x: PF.dropout(x, "0.5"), TypeError, "p must be a real number", None, id="p_str"
    ),
    pytest.param(
        lambda bn, x: PF.dropout(x.int(), inplace=True),
        TypeError,
        "input must be float32",
        None,
        id="dropout_int",
    ),
    pytest.param(
        lambda bn, x: PF.dropout(x, 0.5, "yes"), TypeError, "training", None, id="dropout_training"
    ),
    pytest.param(
        lambda bn, x: PF.dropout(x, 0.5, True, 1), TypeError, "inplace", None, id="dropout_inplace"
    ),
    pytest.param(
        lambda bn, x: pnn.replace_modules([bn]),
        TypeError,
        "model must be a torch.nn.Module",
        None,
        id="replace_list",
    ),
]


@pytest.mark.parametrize("call,error,match,prepare", BAD_INPUTS)
def test_bad_input_raises_and_changes_nothing(call, error, match, prepare):
    torch.manual_seed(0)
    bn = pnn.BatchNorm2d(3)
    bn(torch.randn(4, 3, 5, 5))  # non-trivial running statistics and a batch count
    if prepare is not None:
        prepare(bn)
    x = torch.randn(4, 3, 5, 5)
    before = {name: value.clone() for name, value in bn.state_dict().items()}
    x_before = x.clone()
    with pytest.raises(error, match=match):
        call(bn, x)
    after = bn.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], value) for name, value in before.items())
    assert torch.equal(x, x_before)
