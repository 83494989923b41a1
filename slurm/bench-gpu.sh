#!/usr/bin/env bash
# The whole `make bench` on one GPU in under 10 minutes: WE step cost, training images/s by input path
# (reference / default / fast), method overheads (MobileNetV1) and the cost of every grid. Writes
# results/bench/<gpu-name>.md and .json; then the accuracy check (ResNet-56, 15 epochs, 3 seeds, loader
# fp32 vs the fast path) to results/bench/<gpu-name>-accuracy.md and .json. Left out to stay within
# the time: the per-filter loop (one host sync per filter on a GPU) and torch.compile on the fast
# path (minutes per model); pass --compile to add it. Run it on a GPU node directly or through SLURM:
#   sbatch --gres=gpu:1 --time=15 slurm/bench-gpu.sh
# PYTHON picks the interpreter (default: the project's .venv, else python3 on PATH); CIFAR-10 is read
# from DATA_DIR when present there (default data/), else the offline digits set stands in.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA_DIR=${DATA_DIR:-data}
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "bench-gpu: no CUDA device visible")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
timeout 570 "$PYTHON" -m we.bench --device cuda --no-loop --steps 20 --iters 10 --accuracy-epochs 15 --data-dir "$DATA_DIR" "$@"
echo "bench-gpu: done in $(( $(date +%s) - start )) s"
