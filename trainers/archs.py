"""Model architectures as `NetSpec` builders: `ARCHS[name](input_shape, num_classes, **options)`.

Every builder validates its options (a pydantic model, unknown keys rejected) and raises ValueError
naming the offending option. Only graph.py's ops are used; downsampling inside the networks is done by
conv stride (the firmware's strided conv is its fastest way to shrink a map).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainers.graph import INPUT, Add, Conv2d, GlobalAvgPool, Linear, NetSpec, Node, Pool

OptT = TypeVar("OptT", bound=BaseModel)


class ArchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _options(arch: str, model: type[OptT], options: dict[str, Any]) -> OptT:
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "options"
        raise ValueError(f"arch {arch!r}: option {field!r}: {err['msg']}") from None


def _shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C) with positive sizes, got {tuple(input_shape)}")
    return shape[0], shape[1], shape[2]


def _scaled(channels: int, width: float) -> int:
    # Round to a multiple of 4 (at least 4): int8 SIMD kernels consume channels in groups of 4.
    return max(4, round(channels * width / 4.0) * 4)


def _finish(name: str, input_shape: tuple[int, int, int], num_classes: int, nodes: list[Node]) -> NetSpec:
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    spec = NetSpec(name=name, input_shape=input_shape, num_classes=num_classes, nodes=tuple(nodes))
    try:
        spec.shapes()
    except ValueError as exc:
        raise ValueError(f"arch {name!r} does not fit input {input_shape}: {exc}") from None
    return spec


# --------------------------------------------------------------------------------------------------
# digits_cnn


class DigitsCnnOptions(ArchOptions):
    channels: tuple[int, int, int] = (8, 16, 32)
    act: Literal["relu", "relu6"] = "relu"


def digits_cnn(input_shape: Sequence[int], num_classes: int, **options: Any) -> NetSpec:
    """Small CNN for 8x8 digits: conv3x3 → conv3x3 → maxpool 2 → conv3x3 → GAP → linear, BN + ReLU.

    About 0.15 M MACs at the default channels (8, 16, 32), cheap enough for hundreds of QEMU runs; it
    reaches ~98 % float accuracy on digits with the dense trainer's defaults (16, 32, 32 triples the
    MACs for no measurable gain).
    """
    opt = _options("digits_cnn", DigitsCnnOptions, options)
    if min(opt.channels) < 1:
        raise ValueError("arch 'digits_cnn': option 'channels' must be positive")
    c1, c2, c3 = opt.channels
    nodes: list[Node] = [
        Conv2d("conv1", INPUT, c1, kernel=3, padding=1, act=opt.act),
        Conv2d("conv2", "conv1", c2, kernel=3, padding=1, act=opt.act),
        Pool("pool", "conv2", "max", kernel=2, stride=2),
        Conv2d("conv3", "pool", c3, kernel=3, padding=1, act=opt.act),
        GlobalAvgPool("gap", "conv3"),
        Linear("fc", "gap", num_classes),
    ]
    return _finish("digits_cnn", _shape(input_shape), num_classes, nodes)


# --------------------------------------------------------------------------------------------------
# layer_zoo


class LayerZooOptions(ArchOptions):
    channels: int = Field(8, ge=1)


def layer_zoo(input_shape: Sequence[int], num_classes: int, **options: Any) -> NetSpec:
    """A tiny net touching every op the firmware runs, for end-to-end bit-exactness tests.

    Covers: 3x3 conv (ReLU6), strided 3x3 conv, depthwise 3x3 conv, 1x1 conv without activation, residual
    add with ReLU, max pool, 1x1 conv with bias and no batch norm, average pool, GAP, and two linear
    heads summed by a final add: one on the GAP output and one on the (H, W, C) average-pooled map, so
    the NHWC flattening order of linear layers is exercised as well. Needs inputs of at least 8x8
    (12x12 or more gives the flattened head a map larger than 1x1).
    """
    opt = _options("layer_zoo", LayerZooOptions, options)
    shape = _shape(input_shape)
    if shape[0] < 8 or shape[1] < 8:
        raise ValueError(f"arch 'layer_zoo' needs inputs of at least 8x8, got {shape[:2]}")
    c = opt.channels
    nodes: list[Node] = [
        Conv2d("stem", INPUT, c, kernel=3, padding=1, act="relu6"),
        Conv2d("down", "stem", 2 * c, kernel=3, stride=2, padding=1, act="relu"),
        Conv2d("dw", "down", 2 * c, kernel=3, padding=1, depthwise=True, act="relu6"),
        Conv2d("pw", "dw", 2 * c, kernel=1, act="none"),
        Add("res", ("down", "pw"), act="relu"),
        Pool("maxpool", "res", "max", kernel=2, stride=2),
        Conv2d("expand", "maxpool", 3 * c, kernel=1, bias=True, batchnorm=False, act="relu"),
        Pool("avgpool", "expand", "avg", kernel=2, stride=1),
        GlobalAvgPool("gap", "avgpool"),
        Linear("head_gap", "gap", num_classes),
        Linear("head_flat", "avgpool", num_classes),
        Add("logits", ("head_gap", "head_flat")),
    ]
    return _finish("layer_zoo", shape, num_classes, nodes)


# --------------------------------------------------------------------------------------------------
# mobilenet_v1


class MobileNetV1Options(ArchOptions):
    width: float = Field(1.0, gt=0.0, le=4.0)
    act: Literal["relu", "relu6"] = "relu6"


# (pointwise output channels, depthwise stride) of the 13 depthwise-separable blocks.
_MOBILENET_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def mobilenet_v1(input_shape: Sequence[int], num_classes: int, **options: Any) -> NetSpec:
    """MobileNetV1 (Howard et al. 2017) with a `width` multiplier, CIFAR-style for small inputs.

    For inputs of at most 64x64 the stem conv has stride 1 instead of 2 (the usual CIFAR adaptation),
    so a 32x32 input reaches the last blocks at 2x2 instead of 1x1: four stride-2 depthwise convs,
    then GAP and the classifier. About 3.2 M parameters at width 1.0.
    """
    opt = _options("mobilenet_v1", MobileNetV1Options, options)
    shape = _shape(input_shape)
    stem_stride = 1 if max(shape[:2]) <= 64 else 2
    nodes: list[Node] = [
        Conv2d("conv0", INPUT, _scaled(32, opt.width), stride=stem_stride, padding=1, act=opt.act)
    ]
    prev, channels = "conv0", _scaled(32, opt.width)
    for i, (out, stride) in enumerate(_MOBILENET_BLOCKS, start=1):
        dw, pw = f"block{i}_dw", f"block{i}_pw"
        nodes.append(
            Conv2d(dw, prev, channels, kernel=3, stride=stride, padding=1, depthwise=True, act=opt.act)
        )
        channels = _scaled(out, opt.width)
        nodes.append(Conv2d(pw, dw, channels, kernel=1, act=opt.act))
        prev = pw
    nodes += [GlobalAvgPool("gap", prev), Linear("fc", "gap", num_classes)]
    return _finish(f"mobilenet_v1_w{opt.width:g}", shape, num_classes, nodes)


# --------------------------------------------------------------------------------------------------
# ResNets


def _basic_block(
    nodes: list[Node], prefix: str, src: str, in_ch: int, out_ch: int, stride: int, shortcut_bn: bool
) -> str:
    """conv3x3(stride)-BN-ReLU → conv3x3-BN → add(shortcut) → ReLU; 1x1 projection on a shape change."""
    nodes.append(Conv2d(f"{prefix}_conv1", src, out_ch, kernel=3, stride=stride, padding=1, act="relu"))
    nodes.append(Conv2d(f"{prefix}_conv2", f"{prefix}_conv1", out_ch, kernel=3, padding=1, act="none"))
    shortcut = src
    if stride != 1 or in_ch != out_ch:
        shortcut = f"{prefix}_proj"
        nodes.append(
            Conv2d(
                shortcut,
                src,
                out_ch,
                kernel=1,
                stride=stride,
                bias=not shortcut_bn,
                batchnorm=shortcut_bn,
                act="none",
            )
        )
    nodes.append(Add(f"{prefix}_add", (f"{prefix}_conv2", shortcut), act="relu"))
    return f"{prefix}_add"


class ResNet8Options(ArchOptions):
    width: float = Field(1.0, gt=0.0, le=4.0)


def resnet8(input_shape: Sequence[int], num_classes: int, **options: Any) -> NetSpec:
    """ResNet-8 of MLPerf Tiny's image-classification benchmark (a ResNet-v1 for CIFAR-10).

    conv3x3 16 → three basic blocks of 16 / 32 / 64 channels (the last two stride 2, with a 1x1
    stride-2 projection shortcut that, as in the reference model, has a bias and no batch norm) →
    GAP (the reference's 8x8 average pool on 32x32 inputs) → linear. `width` scales the channels.
    Keras "same" padding on stride 2 pads bottom/right only; graph.py pads symmetrically (padding 1),
    which keeps the output sizes and only shifts the sampling grid by one pixel.
    """
    opt = _options("resnet8", ResNet8Options, options)
    shape = _shape(input_shape)
    widths = [_scaled(c, opt.width) for c in (16, 32, 64)]
    nodes: list[Node] = [Conv2d("conv0", INPUT, widths[0], kernel=3, padding=1, act="relu")]
    prev, ch = "conv0", widths[0]
    for i, (out, stride) in enumerate(zip(widths, (1, 2, 2), strict=True), start=1):
        prev = _basic_block(nodes, f"stage{i}", prev, ch, out, stride, shortcut_bn=False)
        ch = out
    nodes += [GlobalAvgPool("gap", prev), Linear("fc", "gap", num_classes)]
    return _finish("resnet8" if opt.width == 1.0 else f"resnet8_w{opt.width:g}", shape, num_classes, nodes)


class ResNet9Options(ArchOptions):
    width: float = Field(1.0, gt=0.0, le=4.0)
    channels: tuple[int, int, int, int] = (64, 128, 256, 512)


def resnet9(input_shape: Sequence[int], num_classes: int, **options: Any) -> NetSpec:
    """ResNet-9 for CIFAR, as used by EAST (Grimaldi et al. 2020) and the nested-sparsity paper.

    Neither paper's text was reachable; this follows the widely used ResNet-9 for CIFAR (M. Page's
    DAWNBench network), which is the common reading of "ResNet-9" in that literature:
    prep conv3x3 64 → layer1: conv3x3 128 + downsample, residual of two conv3x3 128 → layer2: conv3x3
    256 + downsample → layer3: conv3x3 512 + downsample, residual of two conv3x3 512 → global pool →
    linear. Changes to fit graph.py and the firmware: each max-pool downsample becomes stride 2 on the
    preceding conv and the final 4x4 max pool becomes GAP. As in the original, every conv is
    conv-BN-ReLU and the identity residual adds the block input to the ReLU'd branch with no activation
    after the add. `width` scales all channels (the paper sweeps
    w = 1.0 / 0.75 / 0.5 / 0.25); `channels` overrides the four base widths. At width 1.0 this has
    about 6.6 M parameters, more than the paper's figures suggest: its nested model at w = 1.0 takes
    1016 kB, which at ~1.5 bytes per kept weight and 30 % density points to ~2.2 M parameters
    (e.g. channels (64, 128, 256, 256) gives 2.4 M). Treat the default as the reference topology and
    use `channels` / `width` to size it for a 2 MB-flash board.
    """
    opt = _options("resnet9", ResNet9Options, options)
    if min(opt.channels) < 1:
        raise ValueError("arch 'resnet9': option 'channels' must be positive")
    shape = _shape(input_shape)
    c0, c1, c2, c3 = (_scaled(c, opt.width) for c in opt.channels)
    nodes: list[Node] = [
        Conv2d("prep", INPUT, c0, kernel=3, padding=1, act="relu"),
        Conv2d("layer1", "prep", c1, kernel=3, stride=2, padding=1, act="relu"),
        Conv2d("res1_conv1", "layer1", c1, kernel=3, padding=1, act="relu"),
        Conv2d("res1_conv2", "res1_conv1", c1, kernel=3, padding=1, act="relu"),
        Add("res1_add", ("layer1", "res1_conv2")),
        Conv2d("layer2", "res1_add", c2, kernel=3, stride=2, padding=1, act="relu"),
        Conv2d("layer3", "layer2", c3, kernel=3, stride=2, padding=1, act="relu"),
        Conv2d("res3_conv1", "layer3", c3, kernel=3, padding=1, act="relu"),
        Conv2d("res3_conv2", "res3_conv1", c3, kernel=3, padding=1, act="relu"),
        Add("res3_add", ("layer3", "res3_conv2")),
        GlobalAvgPool("gap", "res3_add"),
        Linear("fc", "gap", num_classes),
    ]
    return _finish("resnet9" if opt.width == 1.0 else f"resnet9_w{opt.width:g}", shape, num_classes, nodes)


Builder = Callable[..., NetSpec]
ARCHS: dict[str, Builder] = {
    "digits_cnn": digits_cnn,
    "layer_zoo": layer_zoo,
    "mobilenet_v1": mobilenet_v1,
    "resnet8": resnet8,
    "resnet9": resnet9,
}

# The options model of each builder, for schema checks before any work starts.
ARCH_OPTIONS: dict[str, type[ArchOptions]] = {
    "digits_cnn": DigitsCnnOptions,
    "layer_zoo": LayerZooOptions,
    "mobilenet_v1": MobileNetV1Options,
    "resnet8": ResNet8Options,
    "resnet9": ResNet9Options,
}
