#!/usr/bin/env bash
# One run on a machine with a CUDA GPU answers "what does recording cost at GPU speed":
# recording overhead of an SD1.5-size U-Net at 512x512, 20 steps, fp16 on CUDA (plain / all 25
# blocks / every cross-attention Q·K, medians of interleaved repeats and their ratios), then the
# store writer against this machine's disk. Under 5 minutes on a current GPU.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=/path/to/python to choose the interpreter
#
# Record the printed tables in docs/benchmarks.md ("GPU check").
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check needs a GPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== recording overhead: SD1.5-size U-Net, 512x512, 20 steps, fp16, cuda =="
timeout 240 "$PY" benchmarks/record_overhead.py --device cuda --dtype fp16 --size 512 --steps 20 --repeats 3 \
    --modes plain,blocks,attention --prewarm 0
echo "== store writer against this disk =="
timeout 60 "$PY" benchmarks/writer_throughput.py --repeats 2 --prewarm 0
