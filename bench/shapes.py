"""Parameter and activation shapes of real models, for benchmarks that run their layers."""

from __future__ import annotations

import math


def _resnet50_conv_bn() -> list[tuple[str, str, int, int, int, int]]:
    """torchvision ``resnet50()``'s conv + BN pairs at 224x224 input, in module order.

    Each entry is ``(conv, bn, out_c, in_c, k, hw)``: names, channels, kernel size and the
    BN's (square) spatial size. Stem conv 7x7 stride 2 + BN (112) and a max pool (56),
    then four stages of bottleneck blocks (3, 4, 6, 3 blocks of width 64, 128, 256, 512
    expanding 4x: conv 1x1, BN, conv 3x3, BN, conv 1x1, BN; stages 2-4 halve the size in
    the first block's 3x3 conv, as in torchvision's "ResNet v1.5"; the first block of a
    stage adds a 1x1 ``downsample`` conv + BN after its own layers).
    """
    layers = [("conv1", "bn1", 64, 3, 7, 112)]
    in_c, hw = 64, 56
    for stage, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), 1):
        out_hw = hw if stage == 1 else hw // 2
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            layers.append((f"{p}.conv1", f"{p}.bn1", width, in_c, 1, hw))
            layers.append((f"{p}.conv2", f"{p}.bn2", width, width, 3, out_hw))
            layers.append((f"{p}.conv3", f"{p}.bn3", 4 * width, width, 1, out_hw))
            if b == 0:
                ds = f"{p}.downsample"
                layers.append((f"{ds}.0", f"{ds}.1", 4 * width, in_c, 1, out_hw))
            in_c, hw = 4 * width, out_hw
    return layers


def _resnet50_param_shapes() -> dict[str, tuple[int, ...]]:
    """``resnet50()``'s parameters, name -> shape, in ``named_parameters`` order: each
    conv's weight (no bias), its BN's weight and bias, then the 1000-way ``fc`` layer."""
    shapes: dict[str, tuple[int, ...]] = {}
    for conv, bn, out_c, in_c, k, _ in _resnet50_conv_bn():
        shapes[f"{conv}.weight"] = (out_c, in_c, k, k)
        shapes[f"{bn}.weight"] = (out_c,)
        shapes[f"{bn}.bias"] = (out_c,)
    shapes["fc.weight"] = (1000, 2048)
    shapes["fc.bias"] = (1000,)
    return shapes


def _gpt2_small_param_shapes() -> dict[str, tuple[int, ...]]:
    """Hugging Face ``GPT2Model`` (GPT-2 small) parameters, name -> shape, in order.

    Token and position embeddings, 12 blocks of (LayerNorm, attention ``c_attn`` /
    ``c_proj`` as Conv1D ``(in, out)`` weights with biases, LayerNorm, MLP ``c_fc`` /
    ``c_proj``), a final LayerNorm; the LM head is tied to ``wte``.
    """
    d, vocab, ctx = 768, 50257, 1024
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (vocab, d), "wpe.weight": (ctx, d)}
    for i in range(12):
        p = f"h.{i}"
        for name, weight in (
            ("ln_1", None),
            ("attn.c_attn", (d, 3 * d)),
            ("attn.c_proj", (d, d)),
            ("ln_2", None),
            ("mlp.c_fc", (d, 4 * d)),
            ("mlp.c_proj", (4 * d, d)),
        ):
            shapes[f"{p}.{name}.weight"] = (d,) if weight is None else weight
            shapes[f"{p}.{name}.bias"] = (d,) if weight is None else (weight[1],)
    shapes["ln_f.weight"] = (d,)
    shapes["ln_f.bias"] = (d,)
    return shapes


# 161 tensors, 25,557,032 parameters.
RESNET50_PARAM_SHAPES: dict[str, tuple[int, ...]] = _resnet50_param_shapes()

# BN layer name -> (C, H, W) of its input at 224x224: 53 layers, 12 distinct shapes.
RESNET50_BN_SHAPES: dict[str, tuple[int, int, int]] = {
    bn: (out_c, hw, hw) for _, bn, out_c, _, _, hw in _resnet50_conv_bn()
}

# 148 tensors, 124,439,808 parameters.
GPT2_SMALL_PARAM_SHAPES: dict[str, tuple[int, ...]] = _gpt2_small_param_shapes()


def n_params(shapes: dict[str, tuple[int, ...]]) -> int:
    """The total element count of a dict name -> shape."""
    return sum(math.prod(s) for s in shapes.values())
