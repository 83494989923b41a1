#!/usr/bin/env bash
# The GPU check, on one GPU, offline, in at most 9 minutes (GPU_CHECK_BUDGET_S, default 540):
#   (a) the `cuda` tests (tests/test_cuda.py: device-resident data, amp + channels_last, compile, the WE
#       step without host sync, nccl, a packed task of 2 cells);
#   (b) `make bench` on CUDA, cut to fit: WE step vs one weights pass and training images/s of
#       ResNet-20 and ResNet-56, images/s by input path with the fast path's peak memory (on
#       Fashion-MNIST), method overheads (ResNet-20) -> results/bench/<gpu>.md and .json; then its
#       seed-array table (`--arrays-only`: ResNet-20, ResNet-56, MobileNetV2, K = 1, 2, 5, 10 seeds in one
#       array vs K solo runs, 10 timed steps each, peak memory), within a quarter of the time left (at most
#       120 s; the table is rewritten after every row, so a cut run keeps the rows it measured);
#   (c) the proxy grid (experiments/proxy.yaml), GPU_CHECK_CONCURRENCY cells at once on the GPU,
#       stopped at the budget's end; within 9 minutes its 30 epochs do not fit, so by default the
#       check trains 10 (lr / 10 at 5 and 8; its own run folders): GPU_CHECK_EPOCHS=30 for the grid's
#       schedule (about 3x the time), or `python -m we.grid submit proxy` for the study itself;
#   (d) results/proxy/<gpu>.md: top-1 mean ± std per method, Welch p, images/s and wall time per run,
#       the projected 200-epoch ResNet-56 CIFAR time, the tests' result line and each phase's time.
# Needs only the repository and the 4 Fashion-MNIST .gz files in data/fashion-mnist/ (copy them there
# first, e.g. from Debian's dataset-fashion-mnist: cp /usr/share/datasets/fashion-mnist/*.gz
# data/fashion-mnist/). Python packages the machine lacks are installed from wheels/ when that folder
# exists (prepare it where the network allows: pip download submitit -d wheels/).
#
#   bash slurm/gpu-check.sh                        # on the GPU machine
#   sbatch --gres=gpu:1 --time=12 slurm/gpu-check.sh
#   GPU_CHECK_SCALE=tiny bash slurm/gpu-check.sh   # the CPU dry run: 1 epoch, 2 seeds, 256 images,
#                                                  # -> results/proxy/cpu-dryrun.md (not a result)
# Knobs: GPU_CHECK_EPOCHS (10), GPU_CHECK_SEEDS (5), GPU_CHECK_MODEL (resnet20), GPU_CHECK_CONCURRENCY
# (8), GPU_CHECK_LIMIT_TRAIN (0: all 60,000), GPU_CHECK_BUDGET_S (540), PYTHON, DATA_DIR (data).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA_DIR=${DATA_DIR:-data}
SCALE=${GPU_CHECK_SCALE:-gpu}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
MODEL=${GPU_CHECK_MODEL:-resnet20}
case "$SCALE" in
  gpu)  EPOCHS=${GPU_CHECK_EPOCHS:-10}; SEEDS=${GPU_CHECK_SEEDS:-5}; CONC=${GPU_CHECK_CONCURRENCY:-8}
        LIMIT=${GPU_CHECK_LIMIT_TRAIN:-0}; DEVICE=cuda; RUNS=${GPU_CHECK_RUNS:-results/runs}
        BENCH=(--models resnet20 resnet56 --methods-model resnet20 --steps 20 --iters 10)
        ARRAYS=(--arrays-models resnet20 resnet56 mobilenetv2 --arrays-k 1 2 5 10 --arrays-steps 10) ;;
  tiny) EPOCHS=${GPU_CHECK_EPOCHS:-1}; SEEDS=${GPU_CHECK_SEEDS:-2}; CONC=${GPU_CHECK_CONCURRENCY:-2}
        LIMIT=${GPU_CHECK_LIMIT_TRAIN:-256}; DEVICE=auto; RUNS=${GPU_CHECK_RUNS:-$(mktemp -d)}
        BENCH=(--models resnet20 --no-methods --steps 2 --iters 2 --batch 64)
        ARRAYS=(--arrays-models resnet20 --arrays-k 1 2 --arrays-steps 1 --batch 64) ;;
  *) echo "gpu-check: GPU_CHECK_SCALE must be gpu or tiny, got '$SCALE'" >&2; exit 2 ;;
esac
log() { echo "gpu-check [$(( $(date +%s) - start )) s]: $*"; }
left() { echo $(( BUDGET - ($(date +%s) - start) )); }

# Python packages: the ones the suite imports; missing ones come from wheels/ (no index, no network).
missing=$("$PYTHON" - <<'EOF'
import importlib.util
need = {"torch": "torch", "torchvision": "torchvision", "yaml": "pyyaml", "sklearn": "scikit-learn",
        "scipy": "scipy", "filelock": "filelock", "pandas": "pandas", "submitit": "submitit", "pytest": "pytest",
        "timm": "timm", "tqdm": "tqdm"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
  if [ -d wheels ]; then
    log "installing from wheels/: $missing"
    "$PYTHON" -m pip install -q --no-index --find-links wheels $missing || { log "cannot install $missing from wheels/"; exit 1; }
  else
    log "missing Python packages: $missing (give them as wheels: pip download $missing -d wheels/)"; exit 1
  fi
fi
if [ "$SCALE" = gpu ]; then
  "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu-check: no CUDA device visible")' || exit 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
compgen -G "$DATA_DIR/fashion-mnist/*.gz" >/dev/null || compgen -G "$DATA_DIR/FashionMNIST/raw/*" >/dev/null ||
  compgen -G "/usr/share/datasets/fashion-mnist/*.gz" >/dev/null ||
  { log "no Fashion-MNIST files in $DATA_DIR/fashion-mnist/ (the 4 idx .gz files)"; exit 1; }
GPU=$("$PYTHON" -c 'import torch; from we.bench.timing import device_name as d
print(d(torch.device("cuda" if torch.cuda.is_available() else "cpu")))')
WORK=$(mktemp -d)
log "scale $SCALE on $GPU: $MODEL, $EPOCHS epochs, $SEEDS seeds, $CONC cells at once, limit_train $LIMIT, budget $BUDGET s"

# (a) the cuda tests
t=$(date +%s)
timeout $(( $(left) * 2 / 5 )) "$PYTHON" -m pytest -q -ra -m cuda tests/test_cuda.py -p no:cacheprovider >"$WORK/tests.txt" 2>&1
tests_rc=$?
tests_line=$(grep -E "passed|failed|skipped|error" "$WORK/tests.txt" | tail -1)
tests_s=$(( $(date +%s) - t ))
log "(a) cuda tests: $tests_line (exit $tests_rc, $tests_s s)"
tail -25 "$WORK/tests.txt"

# (b) the bench on this device
t=$(date +%s)
if [ "$SCALE" = gpu ]; then BENCH_OUT=results/bench; else BENCH_OUT="$WORK/bench"; fi
timeout $(( $(left) / 2 )) "$PYTHON" -m we.bench --device "$DEVICE" --no-loop --paths-dataset fashion_mnist \
  --data-dir "$DATA_DIR" --out "$BENCH_OUT" --no-arrays "${BENCH[@]}" >"$WORK/bench.txt" 2>&1
bench_rc=$?
bench_s=$(( $(date +%s) - t ))
log "(b) bench: exit $bench_rc, $bench_s s"
tail -5 "$WORK/bench.txt"
t=$(date +%s)
arrays_budget=$(( $(left) / 4 )); [ "$arrays_budget" -gt 120 ] && arrays_budget=120
timeout "$arrays_budget" "$PYTHON" -m we.bench --device "$DEVICE" --arrays-only --out "$BENCH_OUT" "${ARRAYS[@]}" \
  >"$WORK/arrays.txt" 2>&1
arrays_rc=$?
arrays_s=$(( $(date +%s) - t ))
log "(b) seed arrays: exit $arrays_rc, $arrays_s s of $arrays_budget"
tail -8 "$WORK/arrays.txt"

# (c) the proxy grid, packed on the device, until 20 s before the budget's end; (d) its report
t=$(date +%s)
SETS=(model="$MODEL" epochs="$EPOCHS" limit_train="$LIMIT")
[ "$EPOCHS" != 30 ] && SETS+=("lr_milestones=$("$PYTHON" -c "e=$EPOCHS; print(sorted({m for m in (e // 2, 5 * e // 6) if m > 0}))" | tr -d ' ')")
PROXY_OUT=results/proxy/$GPU.md
[ "$SCALE" = tiny ] && PROXY_OUT="$WORK/proxy.md"
"$PYTHON" -m we.bench.proxy --grid proxy --seeds "$SEEDS" --concurrency "$CONC" --deadline-s $(( $(left) - 20 )) \
  --runs-root "$RUNS" --set "${SETS[@]}" --neutral data_dir="$DATA_DIR" download=false workers=2 \
  --bench-json "$BENCH_OUT/$GPU.json" --out "$PROXY_OUT" >"$WORK/proxy.txt" 2>&1
proxy_rc=$?
proxy_s=$(( $(date +%s) - t ))
log "(c) proxy grid: exit $proxy_rc, $proxy_s s"
tail -30 "$WORK/proxy.txt"

total=$(( $(date +%s) - start ))
phases="## The check

- (a) \`pytest -m cuda tests/test_cuda.py\`: $tests_line (exit $tests_rc, $tests_s s)
- (b) \`python -m we.bench ${BENCH[*]}\`: exit $bench_rc, $bench_s s
- (b) \`python -m we.bench --arrays-only ${ARRAYS[*]}\`: exit $arrays_rc, $arrays_s s (at most $arrays_budget s; 124: cut, the rows measured kept)
- (c) proxy grid, $CONC cells at once, --set ${SETS[*]}, seeds $SEEDS: exit $proxy_rc, $proxy_s s
- whole check: $total s of a $BUDGET s budget (scale $SCALE)
"
if [ "$SCALE" = tiny ]; then
  mkdir -p results/proxy
  { echo "# CPU DRY RUN at tiny scale: not a result"
    echo
    echo "\`GPU_CHECK_SCALE=tiny bash slurm/gpu-check.sh\` on $GPU ($(nproc) shared cores): every phase of"
    echo "slurm/gpu-check.sh ran end to end, at $EPOCHS epoch(s) on $LIMIT training images, to show that the"
    echo "script works; the cuda tests skip without a GPU. The numbers below say nothing about WE or the speed."
    echo
    echo "$phases"
    sed 's/^# /## /' "$BENCH_OUT/$GPU.md" 2>/dev/null
    echo
    sed 's/^# /## /' "$PROXY_OUT" 2>/dev/null
  } >results/proxy/cpu-dryrun.md
  log "wrote results/proxy/cpu-dryrun.md"
else
  { echo; echo "$phases"; echo "Input paths, WE step vs weights pass, peak memory, method overheads, seed arrays: results/bench/$GPU.md"; } >>"$PROXY_OUT"
  log "wrote $PROXY_OUT and results/bench/$GPU.md"
fi
log "done in $total s"
[ $tests_rc -eq 0 ] && [ $bench_rc -eq 0 ] && { [ $arrays_rc -eq 0 ] || [ $arrays_rc -eq 124 ]; } && [ $proxy_rc -eq 0 ]
