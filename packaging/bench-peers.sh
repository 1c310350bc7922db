#!/usr/bin/env bash
# The peers benchmark: packrat (each engine: one instance with every core, and its plan) against
# what a user would pick instead — PyTorch, ONNX Runtime (1×T threads, and T×1 sessions), and
# OpenVINO (LATENCY hint, 2 streams, THROUGHPUT hint; f32 and its default precision) — on
# ResNet-50 and a BERT-base-sized encoder with identical seed-0 weights, every system on the
# same cores, interleaved in rounds (the order reverses every round). packrat runs on libtorch
# (TorchScript), ONNX Runtime and OpenVINO (f32 and bf16). Writes bench-out/peers/{table.md,
# *.svg,raw/}. Takes ~35 min on 2 cores; run nothing else meanwhile.
#
#   ./packaging/bench-peers.sh [ROUNDS] [BATCHES]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-2}"
batches="${2:-1,2,4,8,16,32}"
out="$PWD/bench-out/peers"
models="$out/models"
venv="$PWD/.venv-peers"
mkdir -p "$out/raw" "$models"

./packaging/setup-libtorch.sh
./packaging/setup-onnxruntime.sh
if ! "$venv/bin/python" -c 'import torch, torchvision, onnx, onnxruntime, openvino, matplotlib' 2>/dev/null; then
    echo "bench-peers: making $venv (PyTorch, torchvision, ONNX Runtime, OpenVINO from PyPI; a few GB, once)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch==2.13.0 torchvision==0.28.0 onnx onnxruntime==1.32.0 \
        openvino==2026.4.0 numpy matplotlib
fi
[[ -f "$models/bert_base.onnx" ]] || "$venv/bin/python" packaging/peers/export.py "$models"
cargo build --release --quiet

cores="$(python3 -c 'import os; print(",".join(map(str, sorted(os.sched_getaffinity(0)))))')"
config="$out/packrat.toml"
{
    echo "spool = \"$out/spool\""
    echo "state_dir = \"$out/state\""
    for m in resnet50 bert_base; do
        if [[ $m == resnet50 ]]; then input='input = [3, 224, 224]'; else input='inputs = [{ name = "input", shape = [128], dtype = "int64" }]'; fi
        for e in libtorch onnxruntime openvino openvino_bf16; do
            case $e in
                openvino) extra='engine = "openvino"' ;;
                openvino_bf16) extra=$'engine = "openvino"\nprecision = "bf16"' ;;
                *) extra='' ;;
            esac
            ext=$([[ $e == libtorch ]] && echo pt || echo onnx)
            printf '[[model]]\nname = "%s-%s"\nsource = "%s/%s.%s"\n%s\n%s\nmax_batch = 32\nprofile_budget_s = 30\n' \
                "$m" "$e" "$models" "$m" "$ext" "$input" "$extra"
        done
    done
} > "$config"

peers=(pytorch onnxruntime onnxruntime-2x1 openvino-latency-f32 openvino-2streams-f32 openvino-throughput-f32
       openvino-latency-default openvino-2streams-default openvino-throughput-default)
for r in $(seq 1 "$rounds"); do
    for m in resnet50 bert_base; do
        # BERT-base at B = 32 takes seconds per batch on two cores: stop at 16.
        b="$batches"; [[ $m == bert_base ]] && b="${batches%,32}"
        systems=(packrat-libtorch packrat-onnxruntime packrat-openvino packrat-openvino_bf16 "${peers[@]}")
        if (( r % 2 == 0 )); then mapfile -t systems < <(printf '%s\n' "${systems[@]}" | tac); fi
        for s in "${systems[@]}"; do
            echo "bench-peers: round $r/$rounds $m $s" >&2
            case $s in
                packrat-*)
                    ./target/release/packrat bench --config "$config" --model "$m-${s#packrat-}" \
                        --batches "$b" --rounds 5 --t1-rounds 0 --out "$out/raw/r$r" >/dev/null
                    ;;
                *)
                    taskset -c "$cores" "$venv/bin/python" packaging/peers/measure.py "$s" "$models" "$m" "$b" \
                        > "$out/raw/r$r-$m-$s.json"
                    ;;
            esac
        done
    done
done
"$venv/bin/python" packaging/peers/table.py "$out" | tee "$out/table.md"
