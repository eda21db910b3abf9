"""adcnn vs onnxruntime, interleaved (see vs-onnxruntime.sh). Exports the torchvision
architectures with seeded random weights and YOLOv2-tiny (as dsl-examples/yolov2-tiny.yaml
describes it) to ONNX once, and takes the bundled PP-OCRv4 text detector's ONNX file as
dsl-examples/make_ppocr_det.py imports it (trained weights); each round times adcnn (`adcnn-run bench --runs 3`: the median of
three runs after two warm-up runs, in a fresh process) and then onnxruntime (the median of three
runs on a session warmed up once), alternating; the table gives medians over rounds."""
import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

TORCHVISION = {"vgg16": "vgg16", "resnet18": "resnet18", "resnet50": "resnet50",
               "mobilenetv2": "mobilenet_v2", "alexnet": "alexnet",
               "mobilenetv3-small": "mobilenet_v3_small", "mobilenetv3-large": "mobilenet_v3_large"}


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
    if name == "ppocr-det":
        # The bundled real model: its ONNX file as the repository imported it.
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dsl-examples",
                              "make_ppocr_det.py")
        subprocess.run([sys.executable, script, "--onnx-only", path], check=True)
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


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--out", required=True)
    p.add_argument("--adcnn-run", required=True)
    p.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2")
    p.add_argument("models", nargs="+")
    a = p.parse_args()
    counts = [int(t) for t in a.threads.split(",")]
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, onnxruntime {ort.__version__}")
    ceiling = sgemm_ceiling()
    print(f"one-thread SGEMM ceiling (numpy BLAS, 1024^3): {ceiling:.1f} GFLOP/s")
    rows = []
    for name in a.models:
        onnx_path = export(name, a.out)
        sessions = {t: session(onnx_path, t) for t in counts}
        shape = [1] + [d for d in sessions[counts[0]].get_inputs()[0].shape[1:]]
        x = np.random.rand(*shape).astype(np.float32)
        feed = sessions[counts[0]].get_inputs()[0].name
        for sess in sessions.values():
            for _ in range(2):
                sess.run(None, {feed: x})
        ours = {t: [] for t in counts}
        theirs = {t: [] for t in counts}
        compile_ms, gflop, mib = [], 0.0, 0.0
        plan = os.path.join(a.out, f"{name}.plan.bin")
        for _ in range(a.rounds):
            # Interleaved: every thread count of both, in turn, each round.
            for t in counts:
                # onnxruntime's pool threads spin a while after a run: let them go idle
                # before adcnn's process starts, so they do not take its cores.
                time.sleep(0.3)
                r = subprocess.run([a.adcnn_run, "bench", plan, "--threads", str(t), "--runs", "3",
                                    "--quiet"], check=True, capture_output=True, text=True).stdout.split()
                ours[t].append(float(r[1]))
                compile_ms.append(float(r[3]))
                gflop, mib = float(r[4]), float(r[5])
                sess = sessions[t]
                theirs[t].append(statistics.median(1e3 * timed(lambda: sess.run(None, {feed: x}))
                                                   for _ in range(3)))
        for t in counts:
            mo, mt = statistics.median(ours[t]), statistics.median(theirs[t])
            gfs = gflop / (mo / 1e3)
            speedup = statistics.median(ours[counts[0]]) / mo
            rows.append((name, t, mo, mt, mo / mt, speedup, gfs, 100 * gfs / (ceiling * t),
                         statistics.median(compile_ms), mib))
    print(f"\n| model | threads | adcnn ms | ORT ms | ratio | adcnn speedup vs {counts[0]} thread(s) "
          "| adcnn GFLOP/s | % of SGEMM ceiling × threads | compile ms | prepared weights MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.2f} | {r[5]:.2f}× | {r[6]:.1f} "
              f"| {r[7]:.0f} % | {r[8]:.0f} | {r[9]:.0f} |")
    print(f"\n(medians of {a.rounds} interleaved rounds; a round: for each thread count, adcnn's median "
          "of 3 runs after 2 warm-up runs in a fresh process, then ORT's median of 3 runs on a "
          "warmed-up session with that many intra-op threads)")


if __name__ == "__main__":
    main()
