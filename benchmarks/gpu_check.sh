#!/usr/bin/env bash
# The GPU check, for the day a GPU is lent: in <= 8 minutes on one GPU,
#   1. the `gpu` tests (tests/test_gpu.py: bf16 autocast, fused AdamW, pinned memory and
#      non-blocking copies, adapter folding, 4-bit LoRA, batch augmentation on the device),
#   2. bench_train_eval.py at ViT-B/16 224 px, batch 64: toolkit vs plain Trainer + PEFT,
#      images/s and model-FLOPs utilisation (achieved FLOP/s over the device's bf16 peak),
#   3. a scaled-down study benchmark (lora, ia3 x k 2, 8 x 1 seed): toolkit vs plain,
# then one table (benchmarks/_gpu_table.py). Each step has its own time limit; a failed step
# is a row in the table and makes the exit status 1.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--tiny] [--workdir DIR]
#
# --device cpu --tiny is the dry run the test suite runs (tests/test_gpu_check_dry_run.py):
# the same steps on a tiny ViT and a tiny tree, so the script itself is known to work.
# The Python interpreter is $PYTHON (default: python, else python3).
set -uo pipefail

DEVICE=cuda
TINY=0
WORKDIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --tiny) TINY=1; shift ;;
        --workdir) WORKDIR="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-$(command -v python || command -v python3)}"
WORK="${WORKDIR:-$(mktemp -d -t emoset-gpu-check-XXXXXX)}"
mkdir -p "$WORK"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$ROOT" || exit 2
STARTED=$SECONDS

if [ "$TINY" = 1 ]; then
    TRAIN_EVAL=(--tiny)
    STUDY=(--tiny)
    LIMITS=(120 240 120)  # seconds per step: a dry run on a busy 2-core machine
else
    TRAIN_EVAL=(--backbone-size base --quick --no-bf16 --batch-size 64 --steps 20 --warmup 5
                --rounds 1)
    STUDY=(--methods lora ia3 --per-class 2 8 --seeds 0)
    LIMITS=(120 210 120)  # 450 s in all, under the 8 minutes asked
fi

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $WORK/NAME.log
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
    local status=${PIPESTATUS[0]}
    echo "$status" > "$WORK/$name.status"
    return 0
}

step gpu_tests "${LIMITS[0]}" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py \
    -rs --junitxml "$WORK/gpu_tests.xml"
step train_eval "${LIMITS[1]}" "$PY" benchmarks/bench_train_eval.py --device "$DEVICE" \
    "${TRAIN_EVAL[@]}" --workdir "$WORK/bench" --json "$WORK/train_eval.json"
step study "${LIMITS[2]}" "$PY" benchmarks/bench_study.py --device "$DEVICE" "${STUDY[@]}" \
    --workdir "$WORK/bench_study" --json "$WORK/study.json"

"$PY" "$HERE/_gpu_table.py" "$WORK" --device "$DEVICE" --seconds $((SECONDS - STARTED))
