#!/usr/bin/env bash
# Prints the table of predicted latencies (ms) on edge4 for every example and strategy, as in
# the "Partition strategies" chapter.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p adcnn-compiler --bin adcnnc
tmp=$(mktemp -d)
strategies="single layerwise halo-even halo auto fdsp"
printf '| network |'; for s in $strategies; do printf ' %s |' "$s"; done; printf ' ideal bound |\n'
printf '|---|'; for s in $strategies; do printf -- '---:|'; done; printf -- '---:|\n'
for net in alexnet vgg16 resnet18 resnet50 mobilenetv2 mobilenetv3-small mobilenetv3-large yolov2-tiny ppocr-det; do
  printf '| %s |' "$net"
  for s in $strategies; do
    line=$(target/release/adcnnc build "dsl-examples/$net.yaml" --cluster dsl-examples/edge4.yaml --strategy "$s" -o "$tmp/p.bin" | grep '^predicted latency')
    printf ' %s |' "$(echo "$line" | sed -E 's/predicted latency ([0-9.]+) ms.*/\1/')"
  done
  printf ' %s |\n' "$(echo "$line" | sed -E 's/.*ideal bound ([0-9.]+) ms.*/\1/')"
done
rm -r "$tmp"
