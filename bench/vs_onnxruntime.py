"""adcnn vs onnxruntime, interleaved (see vs-onnxruntime.sh). Exports the torchvision
architectures with seeded random weights and YOLOv2-tiny (as dsl-examples/yolov2-tiny.yaml
describes it) to ONNX once; each round times adcnn (`adcnn-run bench --runs 3`: the median of
three runs after two warm-up runs, in a fresh process) and then onnxruntime (the median of three
runs on a session warmed up once), alternating; the table gives medians over rounds."""
import argparse
import os
import statistics
import subprocess
import time

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

TORCHVISION = {"vgg16": "vgg16", "resnet18": "resnet18", "resnet50": "resnet50",
               "mobilenetv2": "mobilenet_v2", "alexnet": "alexnet"}


class YoloV2Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        chans = [3, 16, 32, 64, 128, 256, 512, 1024, 1024]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(chans, chans[1:]))
        self.bns = nn.ModuleList(nn.BatchNorm2d(b) for b in chans[1:])
        self.head = nn.Conv2d(1024, 125, 1)

    def forward(self, x):
        for i, (c, b) in enumerate(zip(self.convs, self.bns)):
            x = F.leaky_relu(b(c(x)), 0.1)
            if i < 5:
                x = F.max_pool2d(x, 2)
            elif i == 5:
                x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2, stride=1)
        return self.head(x)


def export(name, out):
    path = os.path.join(out, f"{name}.onnx")
    if os.path.exists(path):
        return path
    torch.manual_seed(0)
    if name == "yolov2-tiny":
        model, size = YoloV2Tiny(), 416
    else:
        import torchvision
        model, size = getattr(torchvision.models, TORCHVISION[name])(weights=None), 224
    model.eval()
    x = torch.randn(1, 3, size, size)
    torch.onnx.export(model, x, path, opset_version=13, dynamo=False,
                      input_names=["input"], output_names=["output"])
    return path


def sgemm_ceiling():
    """One-thread SGEMM GFLOP/s through numpy's BLAS (best of 5, 1024³)."""
    a = np.random.rand(1024, 1024).astype(np.float32)
    b = np.random.rand(1024, 1024).astype(np.float32)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(5))
    return 2 * 1024 ** 3 / best / 1e9


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--out", required=True)
    p.add_argument("--adcnn-run", required=True)
    p.add_argument("models", nargs="+")
    a = p.parse_args()
    ceiling = sgemm_ceiling()
    print(f"one-thread SGEMM ceiling (numpy BLAS, 1024^3): {ceiling:.1f} GFLOP/s")
    rows = []
    for name in a.models:
        onnx_path = export(name, a.out)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        shape = [1] + [d for d in sess.get_inputs()[0].shape[1:]]
        x = np.random.rand(*shape).astype(np.float32)
        for _ in range(2):
            sess.run(None, {"input": x})
        ours, theirs, compile_ms, gflop, mib = [], [], [], 0.0, 0.0
        plan = os.path.join(a.out, f"{name}.plan.bin")
        for _ in range(a.rounds):
            r = subprocess.run([a.adcnn_run, "bench", plan, "--threads", "1", "--runs", "3", "--quiet"],
                               check=True, capture_output=True, text=True).stdout.split()
            ours.append(float(r[1]))
            compile_ms.append(float(r[3]))
            gflop, mib = float(r[4]), float(r[5])
            theirs.append(statistics.median(1e3 * timed(lambda: sess.run(None, {"input": x}))
                                            for _ in range(3)))
        mo, mt = statistics.median(ours), statistics.median(theirs)
        gfs = gflop / (mo / 1e3)
        rows.append((name, mo, mt, mo / mt, gfs, 100 * gfs / ceiling, statistics.median(compile_ms),
                     mib))
    print(f"\n| model | adcnn ms | ORT ms | ratio | adcnn GFLOP/s | % of SGEMM ceiling | compile ms "
          "| prepared weights MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.1f} | {r[5]:.0f} % | {r[6]:.0f} "
              f"| {r[7]:.0f} |")
    print(f"\n(medians of {a.rounds} interleaved rounds; a round: adcnn's median of 3 runs after 2 "
          "warm-up runs in a fresh process, then ORT's median of 3 runs on a warmed-up session)")


if __name__ == "__main__":
    main()
