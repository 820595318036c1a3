"""Parameter shapes of real models, for benchmarks that step many tensors at once."""

from __future__ import annotations


def _resnet50_param_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision's ``resnet50()`` parameters, name -> shape, in ``named_parameters`` order.

    Stem conv 7x7 + BN, four stages of bottleneck blocks (3, 4, 6, 3 blocks of width 64,
    128, 256, 512 expanding 4x: conv 1x1, BN, conv 3x3, BN, conv 1x1, BN; the first block
    of a stage adds a 1x1 ``downsample`` conv + BN after its own layers), then the
    1000-way ``fc`` layer. Convolutions have no bias.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_bn(conv: str, bn: str, out_c: int, in_c: int, k: int) -> None:
        shapes[f"{conv}.weight"] = (out_c, in_c, k, k)
        shapes[f"{bn}.weight"] = (out_c,)
        shapes[f"{bn}.bias"] = (out_c,)

    conv_bn("conv1", "bn1", 64, 3, 7)
    in_c = 64
    for stage, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), 1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            conv_bn(f"{p}.conv1", f"{p}.bn1", width, in_c, 1)
            conv_bn(f"{p}.conv2", f"{p}.bn2", width, width, 3)
            conv_bn(f"{p}.conv3", f"{p}.bn3", 4 * width, width, 1)
            if b == 0:
                conv_bn(f"{p}.downsample.0", f"{p}.downsample.1", 4 * width, in_c, 1)
            in_c = 4 * width
    shapes["fc.weight"] = (1000, in_c)
    shapes["fc.bias"] = (1000,)
    return shapes


# 161 tensors, 25,557,032 parameters.
RESNET50_PARAM_SHAPES: dict[str, tuple[int, ...]] = _resnet50_param_shapes()
