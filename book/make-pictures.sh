#!/usr/bin/env bash
# Regenerates the plan pictures in book/src/img/ (a test checks they are up to date).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p adcnn-compiler --bin adcnnc
adcnnc=target/release/adcnnc
tmp=$(mktemp -d)
for spec in vgg16:halo-even vgg16:auto vgg16:fdsp yolov2-tiny:auto resnet18:layerwise; do
  net=${spec%%:*}; strategy=${spec##*:}
  "$adcnnc" build "dsl-examples/$net.yaml" --cluster dsl-examples/edge4.yaml --strategy "$strategy" -o "$tmp/plan.bin" > /dev/null
  "$adcnnc" explain "$tmp/plan.bin" --format svg > "book/src/img/$net-$strategy.svg"
done
rm -r "$tmp"
