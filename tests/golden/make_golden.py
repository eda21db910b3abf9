#!/usr/bin/env python3
"""Generate the PyTorch golden cases in tests/golden/cases/.

Run from the repository root:

    python3 -m venv .venv && .venv/bin/pip install torch numpy safetensors
    .venv/bin/python tests/golden/make_golden.py

For every case NAME it writes into tests/golden/cases/:

  NAME.yaml             a tiny network in the adcnn DSL containing the layer(s) under test;
  NAME.safetensors      its weights (only if it has any), named `{layer}.weight`, `{layer}.bias`,
                        `{layer}.running_mean`, `{layer}.running_var` (float32);
  NAME.io.safetensors   `input` (the network input, [C, H, W] float32) and `output` (PyTorch's
                        result with the batch dimension removed; flat outputs as [N]). Cases whose
                        layer under test takes several inputs also store the other operands as
                        `input1`, `input2` (the outputs of the network's producer layers `a`, `b`).

Single-layer cases name the layer under test `layer`. Everything is computed in float32 with
PyTorch's own modules in eval mode, as a user would. The output is deterministic: each case
seeds torch with a CRC of its name, so adding a case does not change the others. The files are
checked in; rerun this script only when adding or changing cases (then commit the diff).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

OUT = Path(__file__).resolve().parent / "cases"

# name -> (description, input shape [C, H, W], input scale, DSL layer entries, builder)
CASES: dict[str, tuple[str, list[int], float, str, Callable]] = {}


def case(name: str, description: str, input_shape: list[int], layers: str, scale: float = 1.0):
    """Register a case. The input is standard normal times `scale`. The builder gets the input
    `x` ([1, C, H, W]) and returns
    `(output, layers, extra_io)`: `layers` maps layer names to the torch modules holding
    their weights, `extra_io` maps extra tensor names (`input1`, ...) to [1, C, H, W] tensors."""

    def register(build):
        assert name not in CASES, name
        CASES[name] = (description, input_shape, scale, layers, build)
        return build

    return register


# ---------------------------------------------------------------------------------------------
# Module helpers with non-trivial parameters.


def bn(c: int, eps: float = 1e-5) -> nn.BatchNorm2d:
    """Inference batch norm with random gamma, beta, running mean and (positive) variance."""
    m = nn.BatchNorm2d(c, eps=eps)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
        m.running_mean.normal_(0.0, 0.5)
        m.running_var.uniform_(0.5, 2.0)
    return m.eval()


def prelu(c: int) -> nn.PReLU:
    m = nn.PReLU(c)
    with torch.no_grad():
        m.weight.uniform_(-0.5, 0.5)
    return m


class PadThen(nn.Module):
    """Asymmetric padding (top, left, bottom, right) then a module, as the DSL's 4-value `p`."""

    def __init__(self, pad: tuple[int, int, int, int], module: nn.Module, value: float = 0.0):
        super().__init__()
        self.pad = pad
        self.module = module
        self.value = value

    def forward(self, x):
        top, left, bottom, right = self.pad
        return self.module(F.pad(x, (left, right, top, bottom), value=self.value))


def darknet_maxpool() -> nn.Module:
    """Darknet's 2x2 stride-1 max pool: pad one row/column at the bottom/right with -inf."""
    return PadThen((0, 0, 1, 1), nn.MaxPool2d(2, stride=1), value=float("-inf"))


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(x)


# ---------------------------------------------------------------------------------------------
# Convolution.


def conv_case(name, description, shape, dsl, module):
    @case(name, description, shape, f"- layer: {dsl}")
    def _(x):
        m = module()
        return run(m, x), {"layer": m.module if isinstance(m, PadThen) else m}, {}


conv_case("conv_k1", "1x1 conv with bias", [3, 7, 9], "conv(4, k=1)", lambda: nn.Conv2d(3, 4, 1))
conv_case("conv_k3_p1", "3x3 conv, padding 1", [3, 9, 11], "conv(5, k=3, p=1)", lambda: nn.Conv2d(3, 5, 3, padding=1))
conv_case(
    "conv_k3_s2_p1", "3x3 conv, stride 2", [3, 9, 11], "conv(4, k=3, s=2, p=1)",
    lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1),
)
conv_case(
    "conv_k5_s3_p2", "5x5 conv, stride 3", [2, 13, 11], "conv(3, k=5, s=3, p=2)",
    lambda: nn.Conv2d(2, 3, 5, stride=3, padding=2),
)
conv_case(
    "conv_k7_s2_p3", "7x7 stem conv, stride 2", [3, 15, 17], "conv(4, k=7, s=2, p=3)",
    lambda: nn.Conv2d(3, 4, 7, stride=2, padding=3),
)
conv_case(
    "conv_nobias", "3x3 conv without bias, no padding", [3, 9, 7], "conv(5, k=3, bias=false)",
    lambda: nn.Conv2d(3, 5, 3, bias=False),
)
conv_case(
    "conv_pad_hw", "3x3 conv, padding 1 (height) and 2 (width)", [3, 7, 9], "conv(4, k=3, p=[1, 2])",
    lambda: nn.Conv2d(3, 4, 3, padding=(1, 2)),
)
conv_case(
    "conv_pad_asym", "3x3 stride-2 conv padded only bottom/right (TF 'SAME')", [3, 9, 11],
    "conv(4, k=3, s=2, p=[0, 0, 1, 1])",
    lambda: PadThen((0, 0, 1, 1), nn.Conv2d(3, 4, 3, stride=2)),
)
conv_case(
    "conv_pad_asym4", "3x3 conv with four different paddings", [2, 7, 9], "conv(3, k=3, p=[0, 1, 2, 3])",
    lambda: PadThen((0, 1, 2, 3), nn.Conv2d(2, 3, 3)),
)
conv_case(
    "conv_dilation2", "3x3 conv, dilation 2", [3, 11, 9], "conv(4, k=3, p=2, d=2)",
    lambda: nn.Conv2d(3, 4, 3, padding=2, dilation=2),
)
conv_case(
    "conv_groups2", "3x3 conv, 2 groups", [4, 7, 9], "conv(6, k=3, p=1, g=2)",
    lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2),
)
conv_case(
    "conv_depthwise", "depthwise 3x3 conv, stride 2", [6, 9, 9], "dwconv(k=3, s=2, p=1)",
    lambda: nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6),
)
conv_case(
    "conv_depthwise_nobias", "depthwise 5x5 conv without bias", [5, 11, 9], "dwconv(k=5, p=2, bias=false)",
    lambda: nn.Conv2d(5, 5, 5, padding=2, groups=5, bias=False),
)
conv_case(
    "conv_k1x3", "1x3 conv", [3, 7, 9], "conv(4, k=[1, 3], p=[0, 1])",
    lambda: nn.Conv2d(3, 4, (1, 3), padding=(0, 1)),
)
conv_case(
    "conv_k3x1", "3x1 conv, stride 2 in height only", [3, 9, 7], "conv(4, k=[3, 1], s=[2, 1], p=[1, 0])",
    lambda: nn.Conv2d(3, 4, (3, 1), stride=(2, 1), padding=(1, 0)),
)
conv_case(
    "conv_rect_all", "3x5 conv, stride [1, 2], dilation [2, 1]", [2, 11, 13],
    "conv(3, k=[3, 5], s=[1, 2], p=[2, 2], d=[2, 1])",
    lambda: nn.Conv2d(2, 3, (3, 5), stride=(1, 2), padding=(2, 2), dilation=(2, 1)),
)

# ---------------------------------------------------------------------------------------------
# Normalisation and activations.


def unary_case(name, description, shape, dsl, module, scale=1.0, weights=True):
    @case(name, description, shape, f"- layer: {dsl}", scale=scale)
    def _(x):
        m = module()
        return run(m, x), ({"layer": m} if weights else {}), {}

    return _


unary_case("bn", "batch norm, default eps", [3, 5, 7], "bn", lambda: bn(3))
unary_case("bn_eps", "batch norm, eps 0.001", [4, 7, 5], "bn(eps=0.001)", lambda: bn(4, eps=1e-3))
unary_case("relu", "relu", [3, 5, 7], "relu", nn.ReLU, weights=False)
unary_case("relu6", "relu6 (inputs scaled to exceed 6)", [3, 5, 7], "relu6", nn.ReLU6, scale=4.0, weights=False)
unary_case("clip", "clip(-0.5, 0.7)", [3, 5, 7], "clip(-0.5, 0.7)", lambda: nn.Hardtanh(-0.5, 0.7), weights=False)
unary_case("leaky_relu", "leaky relu, slope 0.1", [3, 5, 7], "leaky_relu(slope=0.1)", lambda: nn.LeakyReLU(0.1), weights=False)
unary_case("prelu", "prelu, one slope per channel", [4, 5, 7], "prelu", lambda: prelu(4))
unary_case("sigmoid", "sigmoid (inputs scaled)", [3, 5, 7], "sigmoid", nn.Sigmoid, scale=3.0, weights=False)
unary_case("dropout", "dropout at inference is the identity", [3, 5, 7], "dropout(p=0.5)", lambda: nn.Dropout(0.5), weights=False)

# ---------------------------------------------------------------------------------------------
# Pooling.

unary_case("maxpool_k2", "2x2 max pool, odd sizes (floor)", [3, 9, 11], "maxpool(2)", lambda: nn.MaxPool2d(2), weights=False)
unary_case(
    "maxpool_k3_s2_p1", "3x3 stride-2 max pool, padding 1", [3, 11, 13], "maxpool(3, s=2, p=1)",
    lambda: nn.MaxPool2d(3, 2, 1), weights=False,
)
unary_case(
    "maxpool_ceil", "3x3 stride-2 max pool, ceil mode adds a partial window", [2, 10, 9],
    "maxpool(3, s=2, ceil=true)", lambda: nn.MaxPool2d(3, 2, ceil_mode=True), weights=False,
)
unary_case(
    "maxpool_ceil_drop", "2x2 stride-2 pad-1 ceil-mode max pool: the last window would start in the padding",
    [2, 9, 7], "maxpool(2, s=2, p=1, ceil=true)", lambda: nn.MaxPool2d(2, 2, 1, ceil_mode=True), weights=False,
)
unary_case(
    "maxpool_ceil_k3_s3", "3x3 stride-3 pad-1 ceil-mode max pool (drops the last window)", [2, 8, 11],
    "maxpool(3, s=3, p=1, ceil=true)", lambda: nn.MaxPool2d(3, 3, 1, ceil_mode=True), weights=False,
)
unary_case(
    "maxpool_darknet", "darknet 2x2 stride-1 max pool, -inf padding bottom/right", [4, 13, 13],
    "maxpool(2, s=1, p=[0, 0, 1, 1])", darknet_maxpool, weights=False,
)
unary_case("avgpool_k2", "2x2 average pool, odd sizes (floor)", [3, 9, 11], "avgpool(2)", lambda: nn.AvgPool2d(2), weights=False)
unary_case(
    "avgpool_pad", "3x3 stride-2 average pool, padding counted", [3, 9, 11], "avgpool(3, s=2, p=1)",
    lambda: nn.AvgPool2d(3, 2, 1), weights=False,
)
unary_case(
    "avgpool_pad_nocount", "3x3 stride-2 average pool, padding not counted", [3, 9, 11],
    "avgpool(3, s=2, p=1, count_pad=false)", lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), weights=False,
)
unary_case(
    "avgpool_ceil", "3x3 stride-2 ceil-mode average pool, last window hangs past the edge", [2, 10, 8],
    "avgpool(3, s=2, ceil=true)", lambda: nn.AvgPool2d(3, 2, ceil_mode=True), weights=False,
)
unary_case(
    "avgpool_ceil_pad", "3x3 stride-2 pad-1 ceil-mode average pool, padding counted", [2, 10, 9],
    "avgpool(3, s=2, p=1, ceil=true)", lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True), weights=False,
)
unary_case(
    "avgpool_ceil_pad_nocount", "3x3 stride-2 pad-1 ceil-mode average pool, padding not counted", [2, 10, 9],
    "avgpool(3, s=2, p=1, ceil=true, count_pad=false)",
    lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), weights=False,
)
unary_case(
    "avgpool_k2_s3", "2x2 stride-3 average pool with padding 1, count_pad=false", [3, 11, 10],
    "avgpool(2, s=3, p=1, count_pad=false)", lambda: nn.AvgPool2d(2, 3, 1, count_include_pad=False), weights=False,
)
unary_case(
    "global_avgpool", "global average pool", [5, 7, 9], "global_avgpool", lambda: nn.AdaptiveAvgPool2d(1),
    weights=False,
)

# ---------------------------------------------------------------------------------------------
# Multi-input operators: the operands besides the network input come from 1x1/3x3 convs `a`, `b`.


@case("add2", "add of two tensors", [4, 7, 9], "- a: conv(4, k=1)\n- layer: input, a -> add")
def _(x):
    a = nn.Conv2d(4, 4, 1)
    ya = a(x)
    return x + ya, {"a": a}, {"input1": ya}


@case(
    "add3", "add of three tensors, via add(refs): operands b, input, a", [4, 7, 9],
    "- a: conv(4, k=1)\n- b: input -> conv(4, k=3, p=1)\n- layer: add(input, a)",
)
def _(x):
    a, b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=1)
    ya, yb = a(x), b(x)
    return yb + x + ya, {"a": a, "b": b}, {"input1": ya, "input2": yb}


@case("concat2", "channel concat of two tensors", [2, 7, 9], "- a: conv(3, k=1)\n- layer: input, a -> concat")
def _(x):
    a = nn.Conv2d(2, 3, 1)
    ya = a(x)
    return torch.cat([x, ya], dim=1), {"a": a}, {"input1": ya}


@case(
    "concat3", "channel concat of three tensors, via concat(refs): operands b, input, a", [2, 7, 9],
    "- a: conv(3, k=1)\n- b: input -> conv(1, k=3, p=1)\n- layer: concat(input, a)",
)
def _(x):
    a, b = nn.Conv2d(2, 3, 1), nn.Conv2d(2, 1, 3, padding=1)
    ya, yb = a(x), b(x)
    return torch.cat([yb, x, ya], dim=1), {"a": a, "b": b}, {"input1": ya, "input2": yb}


# ---------------------------------------------------------------------------------------------
# Flat tensors, softmax, padding.

unary_case("flatten", "flatten [3, 5, 7] to [105]", [3, 5, 7], "flatten", lambda: nn.Flatten(), weights=False)


@case("linear", "linear with bias on a flat input", [12, 1, 1], "- layer: linear(5)")
def _(x):
    m = nn.Linear(12, 5)
    return m(x.flatten(1)), {"layer": m}, {}


@case("linear_nobias", "linear without bias on a flat input", [16, 1, 1], "- layer: linear(7, bias=false)")
def _(x):
    m = nn.Linear(16, 7, bias=False)
    return m(x.flatten(1)), {"layer": m}, {}


unary_case(
    "softmax_channels", "softmax over the channels of every pixel", [5, 3, 3], "softmax",
    lambda: nn.Softmax(dim=1), scale=3.0, weights=False,
)
unary_case(
    "softmax_vector", "softmax over a flat vector", [10, 1, 1], "softmax", lambda: nn.Softmax(dim=1), scale=3.0,
    weights=False,
)
unary_case(
    "pad_zero", "zero padding, asymmetric", [3, 5, 7], "pad([1, 2, 0, 3])",
    lambda: PadThen((1, 2, 0, 3), nn.Identity()), weights=False,
)
unary_case(
    "pad_value", "constant padding with value -1.5, [h, w] form", [2, 5, 7], "pad([2, 1], value=-1.5)",
    lambda: PadThen((2, 1, 2, 1), nn.Identity(), value=-1.5), weights=False,
)
unary_case(
    "pad_value_asym", "constant padding 0.25 on the bottom/right only", [2, 5, 5], "pad([0, 0, 1, 2], value=0.25)",
    lambda: PadThen((0, 0, 1, 2), nn.Identity(), value=0.25), weights=False,
)

# ---------------------------------------------------------------------------------------------
# Composite networks. `layers` maps our layer names to the torch submodules holding their weights.


def submodules(model: nn.Module, names: dict[str, str]) -> dict[str, nn.Module]:
    return {layer: model.get_submodule(path) for path, layer in names.items()}


def weighted_leaves(model: nn.Module) -> dict[str, nn.Module]:
    """Every leaf module with parameters or buffers, by its path (nn.Sequential paths match the
    DSL's `entry.index` layer names)."""
    return {
        path: m
        for path, m in model.named_modules()
        if path and not list(m.children()) and (list(m.parameters()) or list(m.buffers()))
    }


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock with a downsample branch."""

    def __init__(self, inp: int, out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = bn(out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = bn(out)
        self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), bn(out))

    def forward(self, x):
        identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


@case(
    "resnet_block", "ResNet basic block with a strided 1x1 downsample branch", [4, 9, 9],
    """- main: conv(8, k=3, s=2, p=1, bias=false) as conv1 | bn as bn1 | relu | conv(8, k=3, p=1, bias=false) as conv2 | bn as bn2
- down: input -> conv(8, k=1, s=2, bias=false) | bn
- sum: add(main)
- out: relu""",
)
def _(x):
    m = BasicBlock(4, 8, 2)
    names = {
        "conv1": "main.conv1",
        "bn1": "main.bn1",
        "conv2": "main.conv2",
        "bn2": "main.bn2",
        "downsample.0": "down.0",
        "downsample.1": "down.1",
    }
    return run(m, x), submodules(m, names), {}


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 InvertedResidual (stride 1, with the residual connection)."""

    def __init__(self, inp: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.conv = nn.Sequential(
            nn.Sequential(nn.Conv2d(inp, hidden, 1, bias=False), bn(hidden), nn.ReLU6(inplace=True)),
            nn.Sequential(nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False), bn(hidden), nn.ReLU6(inplace=True)),
            nn.Conv2d(hidden, inp, 1, bias=False),
            bn(inp),
        )

    def forward(self, x):
        return x + self.conv(x)


@case(
    "mobilenet_v2_block", "MobileNetV2 inverted residual (expand 3, stride 1)", [4, 9, 9],
    """- expand: conv(12, k=1, bias=false) as conv | bn as bn | relu6
- dw: dwconv(k=3, p=1, bias=false) as conv | bn as bn | relu6
- project: conv(4, k=1, bias=false) as conv | bn as bn
- out: add(input)""",
    scale=2.0,
)
def _(x):
    m = InvertedResidual(4, 3)
    names = {
        "conv.0.0": "expand.conv",
        "conv.0.1": "expand.bn",
        "conv.1.0": "dw.conv",
        "conv.1.1": "dw.bn",
        "conv.2": "project.conv",
        "conv.3": "project.bn",
    }
    return run(m, x), submodules(m, names), {}


@case(
    "tiny_classifier", "conv, bn, relu, maxpool, flatten, linear, softmax", [3, 15, 15],
    """- features: conv(8, k=3, p=1, bias=false) | bn | relu | maxpool(2)
- classifier: flatten | linear(10) | softmax""",
)
def _(x):
    m = nn.Sequential()
    m.add_module("features", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), bn(8), nn.ReLU(), nn.MaxPool2d(2)))
    m.add_module("classifier", nn.Sequential(nn.Flatten(), nn.Linear(8 * 7 * 7, 10), nn.Softmax(dim=1)))
    return run(m, x), weighted_leaves(m), {}


@case(
    "tiny_yolo", "darknet-style stack: conv, bn, leaky relu, 2x2 pools (the last stride 1), 1x1 head", [3, 13, 13],
    """- b1: conv(8, k=3, p=1, bias=false) | bn | leaky_relu(slope=0.1) | maxpool(2)
- b2: conv(16, k=3, p=1, bias=false) | bn | leaky_relu(slope=0.1) | maxpool(2, s=1, p=[0, 0, 1, 1])
- head: conv(8, k=1)""",
)
def _(x):
    m = nn.Sequential()
    m.add_module("b1", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), bn(8), nn.LeakyReLU(0.1), nn.MaxPool2d(2)))
    m.add_module(
        "b2", nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), bn(16), nn.LeakyReLU(0.1), darknet_maxpool())
    )
    m.add_module("head", nn.Conv2d(16, 8, 1))
    return run(m, x), weighted_leaves(m), {}


class Fire(nn.Module):
    """SqueezeNet's fire module: squeeze 1x1, then 1x1 and 3x3 expands concatenated."""

    def __init__(self, inp: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(inp, squeeze, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], dim=1)


@case(
    "fire", "SqueezeNet fire module (concat of two expand branches)", [8, 9, 9],
    """- squeeze: conv(4, k=1) | relu
- e1: conv(6, k=1) | relu
- e3: squeeze -> conv(6, k=3, p=1) | relu
- out: e1, e3 -> concat""",
)
def _(x):
    m = Fire(8, 4, 6)
    return run(m, x), weighted_leaves(m), {}


# ---------------------------------------------------------------------------------------------


def unbatch(t: torch.Tensor) -> torch.Tensor:
    """[1, C, H, W] -> [C, H, W]; flat results ([1, N] or [1, N, 1, 1]) -> [N]."""
    t = t.detach()[0]
    if t.dim() == 1 or (t.dim() == 3 and t.shape[1] == 1 and t.shape[2] == 1):
        t = t.reshape(-1)
    return t.to(torch.float32).contiguous()


def weight_tensors(layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    out = {}
    for layer, module in layers.items():
        for suffix, t in module.state_dict().items():
            if suffix == "num_batches_tracked":
                continue
            assert suffix in ("weight", "bias", "running_mean", "running_var"), (layer, suffix)
            out[f"{layer}.{suffix}"] = t.detach().to(torch.float32).contiguous()
    return out


def yaml_text(name: str, description: str, shape: list[int], layers: str, has_weights: bool) -> str:
    lines = [
        f"# Golden case `{name}`: {description}.",
        "# Generated by tests/golden/make_golden.py; PyTorch's result is in the .io.safetensors file.",
        "network:",
        f"  name: {name}",
        f"  input: {{ shape: [{', '.join(map(str, shape))}] }}",
    ]
    if has_weights:
        lines.append(f"  weights: {name}.safetensors")
    lines.append("  layers:")
    lines += [f"    {entry}" for entry in layers.splitlines()]
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    for name, (description, shape, scale, layers, build) in CASES.items():
        torch.manual_seed(zlib.crc32(name.encode()))
        x = torch.randn([1, *shape], dtype=torch.float32) * scale
        with torch.no_grad():
            y, modules, extra = build(x)
        weights = weight_tensors(modules)
        io = {"input": x[0].clone(), "output": unbatch(y).clone()}
        io.update({k: v.detach()[0].clone() for k, v in extra.items()})
        (OUT / f"{name}.yaml").write_text(yaml_text(name, description, shape, layers, bool(weights)))
        if weights:
            save_file(weights, OUT / f"{name}.safetensors")
        save_file(io, OUT / f"{name}.io.safetensors")
        print(f"{name:28} {list(shape)} -> {list(io['output'].shape)}  {len(weights)} weight tensors")


if __name__ == "__main__":
    main()
