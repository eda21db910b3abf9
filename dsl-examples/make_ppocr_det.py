#!/usr/bin/env python3
"""The bundled real model: PP-OCRv4's text detector, imported once.

PP-OCRv4 "det" is PaddleOCR's DBNet-style text detector (a PP-LCNetV3 backbone with
squeeze-and-excitation and hard-swish, an FPN-style neck with nearest upsampling, a head of
transposed convolutions; 1.17 M parameters, trained on real text). Its ONNX export ships
inside the `rapidocr_onnxruntime` wheel on PyPI (Apache-2.0, like PaddleOCR's weights). The
photo is scikit-image's `data.page()` (a photographed book page), from its wheel.

    python3 -m venv /tmp/ocr && /tmp/ocr/bin/pip install onnx onnxruntime numpy pillow safetensors
    /tmp/ocr/bin/python dsl-examples/make_ppocr_det.py [--adcnnc target/release/adcnnc]
    /tmp/ocr/bin/python dsl-examples/make_ppocr_det.py --onnx-only det.onnx   # for benchmarks

It downloads the two wheels (pip download, no dependencies), checks the model's and the
photo's SHA-256, and writes:

- `dsl-examples/ppocr-det.yaml` and `ppocr-det.safetensors`: the model imported by
  `adcnnc import` for a fixed 192×384 input, its first convolution's input channels
  reversed so it takes RGB (PaddleOCR feeds OpenCV's BGR; the arithmetic is otherwise the
  same), with the image preprocessing PaddleOCR uses (x / 255 − 0.5) / 0.5;
- `dsl-examples/images/page.png`: the photo;
- `tests/golden/ppocr-det.io.safetensors`: the photo resized to 384×192 (`pixels`, uint8
  H×W×3, resized by Pillow) and onnxruntime's output for it (`output`, [1, 192, 384]), which
  `tests/real_model.rs` compares adcnn with.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS = ["rapidocr_onnxruntime==1.4.4", "scikit-image==0.26.0"]
MODEL = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
MODEL_SHA256 = "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"
PAGE = "skimage/data/page.png"
PAGE_SHA256 = "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3"
H, W = 192, 384

HEADER = """\
# PP-OCRv4 text detector ("det"): PaddleOCR's DBNet-style detector on a PP-LCNetV3 backbone,
# trained weights (Apache-2.0, PaddlePaddle authors), from the ONNX file in the
# `rapidocr_onnxruntime` 1.4.4 wheel on PyPI; imported by `adcnnc import` for a 192×384 input
# with dsl-examples/make_ppocr_det.py, which reversed the first convolution's input channels
# so it takes RGB. Its output is a text probability map of the input's size:
#
#   adcnn-run plan.bin --local --input dsl-examples/images/page.png --boxes boxes.png
"""


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def download(folder):
    wheels = {}
    for spec in WHEELS:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "-d", folder, spec],
            check=True, stdout=subprocess.DEVNULL,
        )
        name = spec.split("==")[0].replace("-", "_")
        [path] = [os.path.join(folder, f) for f in os.listdir(folder)
                  if f.startswith(name) and f.endswith(".whl")]
        wheels[spec] = path
    return wheels


def extract(wheel, member, out, want):
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    got = sha256(out)
    if want and got != want:
        sys.exit(f"{member}: sha256 {got}, expected {want}")
    return got


def fixed_rgb_model(src, dst):
    """The model for a [1, 3, H, W] input, its first convolution reading RGB."""
    m = onnx.load(src)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (1, 3, H, W)):
        d.Clear()
        d.dim_value = v
    first = next(n for n in m.graph.node if n.op_type == "Conv")
    weight = first.input[1]
    for n in m.graph.node:
        if n.op_type == "Constant" and n.output[0] == weight:
            t = n.attribute[0].t
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:, ::-1].copy(), t.name))
            break
    else:
        for i, t in enumerate(m.graph.initializer):
            if t.name == weight:
                m.graph.initializer[i].CopyFrom(
                    numpy_helper.from_array(numpy_helper.to_array(t)[:, ::-1].copy(), t.name))
                break
        else:
            sys.exit(f"the first convolution's weight `{weight}` was not found")
    onnx.save(m, dst)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adcnnc", default=None,
                   help="the adcnnc binary (default: cargo run --release --bin adcnnc)")
    p.add_argument("--onnx-only", metavar="PATH",
                   help="only write the model as imported (fixed dims, RGB) to PATH, as ONNX")
    args = p.parse_args()
    if args.onnx_only:
        with tempfile.TemporaryDirectory() as tmp:
            wheels = download(tmp)
            model = os.path.join(tmp, "det.onnx")
            extract(wheels[WHEELS[0]], MODEL, model, MODEL_SHA256)
            fixed_rgb_model(model, args.onnx_only)
        return
    import onnxruntime as ort
    from PIL import Image
    from safetensors.numpy import save_file

    adcnnc = [args.adcnnc] if args.adcnnc else [
        "cargo", "run", "-q", "--release", "-p", "adcnn-compiler", "--bin", "adcnnc", "--"]
    with tempfile.TemporaryDirectory() as tmp:
        wheels = download(tmp)
        model = os.path.join(tmp, "det.onnx")
        extract(wheels[WHEELS[0]], MODEL, model, MODEL_SHA256)
        page = os.path.join(ROOT, "dsl-examples", "images", "page.png")
        extract(wheels[WHEELS[1]], PAGE, page, PAGE_SHA256)
        fixed = os.path.join(tmp, "det-rgb.onnx")
        fixed_rgb_model(model, fixed)
        yaml = os.path.join(ROOT, "dsl-examples", "ppocr-det.yaml")
        subprocess.run(adcnnc + ["import", fixed, "-o", yaml], check=True, cwd=ROOT)

        text = open(yaml).read()
        body = text[text.index("network:"):]
        body = body.replace(
            f"    shape: [3, {H}, {W}]\n",
            f"    shape: [3, {H}, {W}]\n"
            "    image: { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] }\n", 1)
        with open(yaml, "w") as f:
            f.write(HEADER + body)

        pixels = np.asarray(Image.open(page).convert("RGB").resize((W, H), Image.BILINEAR))
        x = (pixels.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
        x = x.transpose(2, 0, 1)[None].copy()
        sess = ort.InferenceSession(fixed, providers=["CPUExecutionProvider"])
        y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        save_file({"pixels": np.ascontiguousarray(pixels), "output": np.ascontiguousarray(y[0])},
                  os.path.join(ROOT, "tests", "golden", "ppocr-det.io.safetensors"))
        print(f"onnxruntime: output {list(y.shape)}, {float((y > 0.3).mean()):.3f} of it above 0.3")


if __name__ == "__main__":
    sys.exit(main())
