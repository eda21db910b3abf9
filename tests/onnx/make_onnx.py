#!/usr/bin/env python3
"""ONNX import test data: small models covering every supported operator and option.

For each case this writes `cases/NAME.onnx` and `cases/NAME.io.safetensors` holding `input`
([C, H, W] or [F]) and `output` (onnxruntime's result, batch dimension dropped). Most models
are PyTorch modules exported with the TorchScript exporter (`dynamo=False`); options PyTorch
never emits (auto_pad, Gemm with transB=0 and alpha/beta, Constant, Dropout, Pad with axes,
Softmax before opset 13, ...) are built directly with `onnx.helper`.

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch onnx onnxruntime safetensors numpy
    /tmp/tv/bin/python tests/onnx/make_onnx.py            # the committed small cases
    /tmp/tv/bin/python tests/onnx/make_onnx.py --full DIR # torchvision models, random weights
                                                           # (needs torchvision; not committed)

Everything is seeded; re-running gives the same files (up to exporter versions).
"""

import argparse
import io
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

warnings.filterwarnings("ignore")
HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, "cases")


def randomize(model, seed):
    """Random weights and batch-norm statistics (so no two initializers coincide)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                # PyTorch's default initialisation, but from the seeded generator, so that
                # weights do not depend on how many modules were built before.
                bound = 1.0 / m.weight[0].numel() ** 0.5
                m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * bound)
                if m.bias is not None:
                    m.bias.copy_((torch.rand(m.bias.shape, generator=g) * 2 - 1) * bound)
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
    return model.eval()


def run_ort(model_bytes, x):
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x})[0]


ONLY = []  # --only: make just the cases whose names start with one of these


def save_case(name, model_bytes, x):
    if ONLY and not any(name.startswith(o) for o in ONLY):
        return
    y = run_ort(model_bytes, x)
    assert y.shape[0] == 1, (name, y.shape)
    os.makedirs(CASES, exist_ok=True)
    with open(os.path.join(CASES, f"{name}.onnx"), "wb") as f:
        f.write(model_bytes)
    save_file(
        {"input": np.ascontiguousarray(x[0]), "output": np.ascontiguousarray(y[0])},
        os.path.join(CASES, f"{name}.io.safetensors"),
    )
    print(f"{name:28} {list(x.shape)} -> {list(y.shape)}  {len(model_bytes)} bytes")


def export(name, module, shape, seed, opset=13, keep_bn=True):
    """Exports a seeded module; `keep_bn` keeps BatchNormalization nodes (PRESERVE mode,
    the model in eval mode) instead of letting the exporter fold them into convolutions."""
    torch.manual_seed(seed)
    module = randomize(module, seed)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed + 1000))
    f = io.BytesIO()
    kwargs = dict(training=torch.onnx.TrainingMode.PRESERVE) if keep_bn else {}
    torch.onnx.export(
        module, x, f, opset_version=opset, dynamo=False,
        input_names=["input"], output_names=["output"], **kwargs,
    )
    save_case(name, f.getvalue(), x.numpy())


def export_dynamo(name, module, shape, seed):
    """The default exporter of recent PyTorch (torch.export based): it folds batch norms into
    convolutions, writes adaptive average pools as ReduceMean and names nodes `node_*`, with
    module paths in each node's metadata."""
    torch.manual_seed(seed)
    module = randomize(module, seed)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed + 1000))
    program = torch.onnx.export(module, (x,), dynamo=True, input_names=["input"],
                                output_names=["output"])
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        program.save(path)
        save_case(name, open(path, "rb").read(), x.numpy())


def seq(*layers):
    return nn.Sequential(*layers)


class Lambda(nn.Module):
    def __init__(self, fn, *mods):
        super().__init__()
        self.fn = fn
        self.mods = nn.ModuleList(mods)

    def forward(self, x):
        return self.fn(x, *self.mods)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block, with a strided 1×1 downsample."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = seq(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = seq(BasicBlock(8, 8, 1), BasicBlock(8, 8, 1))
        self.layer2 = seq(BasicBlock(8, 16, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: expand 1×1, depthwise 3×3, project 1×1, ReLU6."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = seq(
            seq(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)),
            seq(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class TinyMobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = seq(
            seq(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)),
            InvertedResidual(8, 8, 1, 2),
            InvertedResidual(8, 12, 2, 2),
            InvertedResidual(12, 12, 1, 2),
        )
        self.classifier = seq(nn.Dropout(0.2), nn.Linear(12, 5))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def cbl(cin, cout):
    return seq(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1))


class TinyYolo(nn.Module):
    """YOLOv2-tiny's shape in miniature: conv-bn-leaky + max-pools, a stride-1 pool that keeps
    its size by padding right and bottom, and a route that concatenates two trunk outputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = seq(cbl(3, 4), nn.MaxPool2d(2, 2))
        self.conv2 = seq(cbl(4, 8), nn.MaxPool2d(2, 2))
        self.conv3 = seq(cbl(8, 8), nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, 1))
        self.conv4 = cbl(8, 8)
        self.head = nn.Conv2d(16, 3 * (5 + 2), 1)

    def forward(self, x):
        a = self.conv3(self.conv2(self.conv1(x)))
        b = self.conv4(a)
        return self.head(torch.cat([b, a], 1))


class Branches(nn.Module):
    """Add and concat of two branches."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        s = self.a(x) + self.b(x)
        return torch.cat([s, self.c(x)], dim=1)


class SqueezeExcite(nn.Module):
    """MobileNetV3's squeeze-and-excitation: global mean, 1×1 reduce, ReLU, 1×1 expand,
    hard sigmoid, a per-channel scale of the input."""

    def __init__(self, c, r):
        super().__init__()
        self.fc1 = nn.Conv2d(c, r, 1)
        self.fc2 = nn.Conv2d(r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class Arithmetic(nn.Module):
    """Tensor-tensor and tensor-constant arithmetic the way models write it: a learnable
    scalar affine (PP-LCNet's), a spelled-out hard-swish, a per-channel scale and shift,
    subtraction and division both ways round where supported, and SiLU."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.scale = nn.Parameter(torch.tensor([0.7]))
        self.shift = nn.Parameter(torch.tensor([0.2]))
        self.gamma = nn.Parameter(torch.rand(1, 6, 1, 1) + 0.5)
        self.beta = nn.Parameter(torch.rand(1, 6, 1, 1) - 0.5)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        y = self.scale * a + self.shift
        y = y * F.relu6(y + 3) / 6
        y = y * self.gamma + self.beta
        y = (y - b) / 2.0 - 0.25
        y = 1.5 - y
        z = y * torch.sigmoid(y)
        return z / (b * b + 1.0) + y * b


class UNetTiny(nn.Module):
    """A U-Net in miniature: two strided stages down, a transposed convolution and a nearest
    upsampling back up, skip connections concatenated (an FPN-style neck, as DBNet's)."""

    def __init__(self):
        super().__init__()
        self.e1 = seq(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.Hardswish())
        self.e2 = seq(nn.Conv2d(8, 12, 3, 2, 1), nn.BatchNorm2d(12), nn.ReLU())
        self.e3 = seq(nn.Conv2d(12, 16, 3, 2, 1), nn.SiLU())
        self.up3 = nn.ConvTranspose2d(16, 12, 2, 2)
        self.d2 = seq(nn.Conv2d(24, 8, 3, 1, 1), nn.ReLU())
        self.head = seq(nn.Conv2d(16, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.ConvTranspose2d(4, 1, 3, 1, 1), nn.Sigmoid())

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(a)
        c = self.e3(b)
        d = self.d2(torch.cat([self.up3(c), b], 1))
        return self.head(torch.cat([F.interpolate(d, scale_factor=2, mode="nearest"), a], 1))


def torch_cases():
    export("conv_relu", seq(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()), (3, 8, 8), 1)
    export("conv_groups_dilation", seq(nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2)), (4, 11, 9), 2)
    export("conv_depthwise", seq(nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)), (6, 7, 7), 3)
    export("conv_rect", seq(nn.Conv2d(3, 4, (3, 1), stride=(2, 1), padding=(1, 0))), (3, 8, 6), 4)
    export("pad_asym_conv", Lambda(lambda x, c: c(F.pad(x, (1, 2, 0, 1))), nn.Conv2d(3, 4, 3)), (3, 6, 6), 5)
    export("pad_value", Lambda(lambda x: F.pad(x, (2, 0, 1, 1), value=-1.5)), (2, 4, 4), 6)
    export("conv_bn", seq(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6, eps=1e-3)), (3, 6, 6), 7)
    export("conv_bn_folded", seq(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU()), (3, 6, 6), 8, keep_bn=False)
    export("relu6_opset11", seq(nn.Conv2d(3, 4, 1), nn.ReLU6()), (3, 5, 5), 9, opset=11)
    export("clamp", Lambda(lambda x: torch.clamp(x, -0.5, 0.7)), (3, 4, 4), 10)
    export("leaky_relu", seq(nn.Conv2d(3, 4, 1), nn.LeakyReLU(0.1)), (3, 5, 5), 11)
    export("prelu", seq(nn.Conv2d(3, 4, 1), nn.PReLU(4), nn.Conv2d(4, 4, 1), nn.PReLU()), (3, 5, 5), 12)
    export("sigmoid", seq(nn.Conv2d(3, 4, 1), nn.Sigmoid()), (3, 5, 5), 13)
    export("maxpool_ceil", seq(nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)), (3, 10, 10), 14)
    export("maxpool_plain", seq(nn.MaxPool2d(2)), (3, 8, 8), 15)
    export("avgpool_count_pad", seq(nn.AvgPool2d(3, 2, padding=1, count_include_pad=True)), (3, 9, 9), 16)
    export("avgpool_no_count_pad", seq(nn.AvgPool2d(3, 2, padding=1, count_include_pad=False)), (3, 9, 9), 17)
    export("avgpool_ceil", seq(nn.AvgPool2d(2, 2, ceil_mode=True)), (3, 7, 7), 18)
    export("global_avgpool", seq(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)), (3, 6, 6), 19)
    export("add_concat", Branches(), (3, 6, 6), 20)
    export("flatten_linear", seq(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.ReLU(), nn.Linear(6, 3)), (3, 6, 6), 21)
    export("reshape_linear", Lambda(lambda x, l: l(x.reshape(1, -1)), nn.Linear(3 * 4 * 4, 5)), (3, 4, 4), 22)
    export("softmax_channels", seq(nn.Conv2d(3, 5, 1), nn.Softmax(dim=1)), (3, 4, 4), 23)
    export("softmax_vector", seq(nn.Flatten(), nn.Linear(12, 7), nn.Softmax(dim=-1)), (3, 2, 2), 24)
    export("bn_1d", seq(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.ReLU()), (3, 2, 2), 25)
    export("resnet_tiny", TinyResNet(), (3, 16, 16), 26)
    export("mobilenetv2_tiny", TinyMobileNetV2(), (3, 16, 16), 27, opset=17)
    export("yolo_tiny", TinyYolo(), (3, 16, 16), 28, opset=18)
    export("resnet_tiny_opset11", TinyResNet(), (3, 16, 16), 29, opset=11)
    export_dynamo("dynamo_resnet_tiny", TinyResNet(), (3, 16, 16), 30)
    export_dynamo("dynamo_mobilenetv2_tiny", TinyMobileNetV2(), (3, 16, 16), 31)
    export_dynamo("dynamo_yolo_tiny", TinyYolo(), (3, 16, 16), 32)
    export("act_hardswish_opset14", seq(nn.Conv2d(3, 6, 3, padding=1), nn.Hardswish(), nn.Conv2d(6, 4, 1), nn.Hardsigmoid(), nn.Conv2d(4, 4, 1), nn.SiLU()), (3, 7, 9), 33, opset=14)
    export("act_hardswish_opset13", seq(nn.Conv2d(3, 6, 3, padding=1), nn.Hardswish(), nn.Conv2d(6, 4, 1), nn.SiLU()), (3, 7, 9), 34, opset=13)
    export("se_block", seq(nn.Conv2d(3, 8, 3, padding=1), nn.Hardswish(), SqueezeExcite(8, 4), nn.Conv2d(8, 4, 1)), (3, 9, 9), 35)
    export("arith_broadcast", Arithmetic(), (3, 8, 8), 36)
    export("convt_stride_pad_outpad", seq(nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)), (4, 5, 6), 37)
    export("convt_groups_dilation", seq(nn.ConvTranspose2d(4, 6, 3, stride=(2, 1), padding=(2, 1), dilation=2, groups=2, bias=False)), (4, 6, 5), 38)
    export("convt_2x2_fpn", seq(nn.Conv2d(3, 8, 3, 2, 1), nn.ConvTranspose2d(8, 4, 2, 2), nn.ReLU(), nn.ConvTranspose2d(4, 1, 2, 2)), (3, 8, 8), 39)
    export("upsample_nearest_opset11", Lambda(lambda x, c: F.interpolate(c(x), scale_factor=(2, 3), mode="nearest"), nn.Conv2d(3, 4, 3, 2, 1)), (3, 8, 8), 40, opset=11)
    export("upsample_nearest_size", Lambda(lambda x, c: F.interpolate(c(x), size=(8, 8), mode="nearest"), nn.Conv2d(3, 4, 3, 2, 1)), (3, 8, 8), 41, opset=13)
    export("unet_tiny", UNetTiny(), (3, 16, 16), 42)
    export_dynamo("dynamo_unet_tiny", UNetTiny(), (3, 16, 16), 43)


# ---- hand-built graphs (options PyTorch does not emit) --------------------------------------

def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def build(name, nodes, inits, in_shape, out_shape, opset=13, seed=0):
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="make_onnx.py")
    model.ir_version = 8
    x = rng.standard_normal((1, *in_shape)).astype(np.float32)
    save_case(name, model.SerializeToString(), x)


def w(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32) * 0.5


def hand_cases():
    rng = np.random.default_rng(100)
    N = helper.make_node
    build("h_conv_same_upper", [
        N("Conv", ["input", "c.weight", "c.bias"], ["output"], name="/c/Conv",
          auto_pad="SAME_UPPER", strides=[2, 2], kernel_shape=[3, 3]),
    ], [init("c.weight", w(rng, 4, 3, 3, 3)), init("c.bias", w(rng, 4))], [3, 8, 7], None, seed=1)
    build("h_conv_same_lower", [
        N("Conv", ["input", "c.weight"], ["output"], name="/c/Conv", auto_pad="SAME_LOWER",
          strides=[2, 1], kernel_shape=[4, 3]),
    ], [init("c.weight", w(rng, 4, 3, 4, 3))], [3, 8, 7], None, seed=2)
    build("h_conv_valid_pads", [
        N("Conv", ["input", "c.weight"], ["t"], name="conv_a", auto_pad="VALID"),
        N("Conv", ["t", "d.weight"], ["output"], name="conv_b", pads=[0, 1, 2, 1]),
    ], [init("c.weight", w(rng, 4, 3, 3, 3)), init("d.weight", w(rng, 2, 4, 3, 3))], [3, 7, 7], None, seed=3)
    build("h_pool_same", [
        N("MaxPool", ["input"], ["t"], name="mp", auto_pad="SAME_UPPER", kernel_shape=[2, 2], strides=[2, 2]),
        N("AveragePool", ["t"], ["output"], name="ap", auto_pad="SAME_LOWER", kernel_shape=[3, 3],
          strides=[1, 1], count_include_pad=0),
    ], [], [3, 7, 7], None, seed=4)
    build("h_gemm_transb0_alpha_beta", [
        N("Flatten", ["input"], ["f"], name="flat"),
        N("Gemm", ["f", "fc.weight", "fc.bias"], ["output"], name="/fc/Gemm", transB=0, alpha=0.5, beta=2.0),
    ], [init("fc.weight", w(rng, 12, 5)), init("fc.bias", w(rng, 1, 5))], [3, 2, 2], None, seed=5)
    build("h_gemm_scalar_c", [
        N("Flatten", ["input"], ["f"], name="flat", axis=1),
        N("Gemm", ["f", "W", "C"], ["output"], name="gemm", transB=1),
    ], [init("W", w(rng, 4, 12)), init("C", np.array([0.25], np.float32))], [3, 2, 2], None, seed=6)
    build("h_matmul_add", [
        N("Flatten", ["input"], ["f"], name="flat"),
        N("MatMul", ["f", "proj.weight"], ["m"], name="/proj/MatMul"),
        N("Add", ["m", "proj.bias"], ["r"], name="/proj/Add"),
        N("Relu", ["r"], ["output"], name="/act/Relu"),
    ], [init("proj.weight", w(rng, 12, 6)), init("proj.bias", w(rng, 6))], [3, 2, 2], None, seed=7)
    build("h_softmax_opset11", [
        N("Flatten", ["input"], ["f"], name="flat"),
        N("Softmax", ["f"], ["output"], name="sm", axis=1),
    ], [], [3, 2, 2], None, opset=11, seed=8)
    build("h_softmax_axis_neg3", [
        N("Softmax", ["input"], ["output"], name="sm", axis=-3),
    ], [], [4, 3, 2], None, seed=9)
    build("h_constant_clip_identity", [
        N("Constant", [], ["lo"], name="lo", value=helper.make_tensor("lo", TensorProto.FLOAT, [], [-0.25])),
        N("Constant", [], ["hi"], name="hi", value_float=0.5),
        N("Identity", ["input"], ["i"], name="id"),
        N("Clip", ["i", "lo", "hi"], ["c"], name="clip"),
        N("Identity", ["c"], ["output"], name="id2"),
    ], [], [2, 3, 3], None, seed=10)
    build("h_clip_min_only", [
        N("Clip", ["input", "lo"], ["a"], name="clip_lo"),
        N("Clip", ["a", "", "hi"], ["b"], name="clip_hi"),
        N("Clip", ["b", "zero"], ["output"], name="as_relu"),
    ], [init("lo", np.array(-1.0, np.float32)), init("hi", np.array(1.0, np.float32)),
        init("zero", np.array(0.0, np.float32))], [2, 3, 3], None, seed=11)
    build("h_clip_opset7_attrs", [
        N("Clip", ["input"], ["output"], name="clip", min=-0.3, max=0.4),
    ], [], [2, 3, 3], None, opset=7, seed=12)
    build("h_dropout_squeeze", [
        N("Dropout", ["input", "ratio"], ["d"], name="/drop/Dropout"),
        N("GlobalAveragePool", ["d"], ["g"], name="gap"),
        N("Squeeze", ["g", "axes"], ["s"], name="sq"),
        N("Unsqueeze", ["s", "axes"], ["u"], name="unsq"),
        N("Reshape", ["u", "shape"], ["r"], name="rs"),
        N("Gemm", ["r", "fc.weight"], ["output"], name="fc", transB=1),
    ], [init("ratio", np.array(0.3, np.float32)), init("axes", np.array([2, 3], np.int64)),
        init("shape", np.array([0, -1], np.int64)), init("fc.weight", w(rng, 3, 4))], [4, 3, 3], None, seed=13)
    build("h_squeeze_opset11", [
        N("GlobalAveragePool", ["input"], ["g"], name="gap"),
        N("Squeeze", ["g"], ["s"], name="sq", axes=[3, 2]),
        N("LeakyRelu", ["s"], ["output"], name="leaky"),
    ], [], [4, 3, 3], None, opset=11, seed=14)
    build("h_pad_opset18_axes", [
        N("Pad", ["input", "pads", "value", "axes"], ["output"], name="pad", mode="constant"),
    ], [init("pads", np.array([1, 0, 2, 3], np.int64)), init("value", np.array(0.5, np.float32)),
        init("axes", np.array([-2, -1], np.int64))], [2, 3, 3], None, opset=18, seed=15)
    build("h_pad_opset7_attrs", [
        N("Pad", ["input"], ["output"], name="pad", pads=[0, 0, 1, 0, 0, 0, 0, 2], value=0.0),
    ], [], [2, 3, 3], None, opset=7, seed=16)
    build("h_resize_half_pixel", [
        N("Resize", ["input", "", "scales"], ["output"], name="up", mode="nearest",
          coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor"),
    ], [init("scales", np.array([1, 1, 3, 2], np.float32))], [2, 3, 4], None, seed=18)
    build("h_resize_asymmetric_paddle", [
        N("Conv", ["input", "c.weight"], ["t"], name="conv"),
        N("Constant", [], ["roi"], name="roi", value=helper.make_tensor("roi", TensorProto.FLOAT, [0], [])),
        N("Constant", [], ["sc"], name="sc", value=helper.make_tensor("sc", TensorProto.FLOAT, [4], [1, 1, 2, 2])),
        N("Resize", ["t", "roi", "sc"], ["u"], name="up", mode="nearest",
          coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        N("HardSigmoid", ["u"], ["h"], name="hsig", alpha=0.2, beta=0.5),
        N("Mul", ["h", "u"], ["output"], name="gate"),
    ], [init("c.weight", w(rng, 3, 2, 1, 1))], [2, 4, 5], None, opset=12, seed=19)
    build("h_upsample_opset9", [
        N("Upsample", ["input", "scales"], ["output"], name="up", mode="nearest"),
    ], [init("scales", np.array([1, 1, 2, 2], np.float32))], [2, 3, 3], None, opset=9, seed=20)
    build("h_dead_branch_identity_weights", [
        N("Identity", ["c.w0"], ["c.weight"], name="dedup"),
        N("Conv", ["input", "c.weight"], ["output"], name="/c/Conv"),
        N("Relu", ["input"], ["unused"], name="dead"),
    ], [init("c.w0", w(rng, 2, 2, 1, 1))], [2, 3, 3], None, seed=17)


def full(folder):
    import torchvision

    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(["alexnet", "vgg16", "resnet18", "resnet50", "mobilenet_v2",
                              "mobilenet_v3_small", "mobilenet_v3_large"]):
        torch.manual_seed(i)
        model = randomize(getattr(torchvision.models, name)(weights=None), i)
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(i))
        path = os.path.join(folder, f"{name}.onnx")
        torch.onnx.export(model, x, path, opset_version=13, dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        y = run_ort(open(path, "rb").read(), x.numpy())
        save_file({"input": x.numpy()[0], "output": y[0]}, os.path.join(folder, f"{name}.io.safetensors"))
        print(f"{name}: {path} ({os.path.getsize(path) >> 20} MiB)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", metavar="DIR", help="export full torchvision models to DIR instead")
    p.add_argument("--only", nargs="*", default=[], metavar="PREFIX",
                   help="make only the cases whose names start with one of these")
    args = p.parse_args()
    ONLY.extend(args.only)
    if args.full:
        full(args.full)
        return
    torch_cases()
    hand_cases()


if __name__ == "__main__":
    sys.exit(main())
