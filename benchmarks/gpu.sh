#!/usr/bin/env bash
# Every GPU figure vitskip publishes, in one resumable run (about 6 minutes on one modern GPU).
#
#   bash benchmarks/gpu.sh                 # all parts not yet written, into benchmarks/results/*_cuda*
#   bash benchmarks/gpu.sh --only plane    # one part (plane, arch, dynamic, env, nsga2); repeatable
#   bash benchmarks/gpu.sh --force         # redo parts whose results exist
#   bash benchmarks/gpu.sh --smoke         # every part at toy size on the CPU, into a temporary folder
#
# Parts, each skipped when its table exists (so an interrupted run resumes part by part):
#   plane    train/compare.py on shapes, fp32 and bf16: every contender found under runs/ and the cache
#            (carry them: runs/<joint and skip+exit runs>, $VITSKIP_HOME/exits) -> plane_shapes_cuda_{fp32,bf16}
#   arch     train/compare.py --arch vit_small_patch16_224 at 224x224, bf16: speed at matched FLOPs
#            -> plane_arch_vit_small_224_cuda_bf16
#   dynamic  train/benchmark.py --arch vit_tiny_patch16_224 at 224x224, bf16: DynamicViT vs static
#            -> arch_vit_tiny_224_cuda_bf16
#   env      the env throughput benchmark (native vector env vs Gymnasium's sync) -> env_cuda
#   nsga2    the NSGA-II vectorised population scoring benchmark -> nsga2_cuda
#
# No uv sync: the interpreter is ${PYTHON:-python3} as it is (on the GPU machine: torch, timm,
# torchvision, pandas, pyarrow and matplotlib installed; the rest carried as wheels on PYTHONPATH).
# The imports are checked first and anything missing is named. The attention kernel is timm's
# fused scaled_dot_product_attention (recorded in each table with the GPU's name).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SMOKE=0
FORCE=0
ONLY=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --force) FORCE=1 ;;
        --only) ONLY+=("$2"); shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown argument '$1' (allowed: --smoke, --force, --only PART)" >&2; exit 2 ;;
    esac
    shift
done
for part in "${ONLY[@]}"; do
    case "$part" in
        plane|arch|dynamic|env|nsga2) ;;
        *) echo "gpu.sh: unknown part '$part' (parts: plane arch dynamic env nsga2)" >&2; exit 2 ;;
    esac
done

"$PY" - <<'EOF'
import importlib.util, sys
need = ["torch", "timm", "torchvision", "numpy", "pandas", "pyarrow", "matplotlib", "gymnasium", "stable_baselines3",
        "sb3_contrib", "pymoo", "tyro", "yaml", "safetensors", "pytest"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu.sh: this Python ({sys.executable}) lacks {', '.join(missing)}: install them or put their wheels on "
             "PYTHONPATH (see the device notes in the README), then run again")
EOF
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [[ $SMOKE == 1 ]]; then
    DEVICE=cpu
    RESULTS=$(mktemp -d)
    trap 'rm -rf "$RESULTS"' EXIT
    export VITSKIP_BENCH_IMAGES=16 VITSKIP_BENCH_ROUNDS=1 VITSKIP_BENCH_THREADS=1 VITSKIP_BENCH_STEPS=256 VITSKIP_BENCH_SMOKE=1
    PLANE=(--no-discover --top1-images 64 --val-images 64 --tome-r 1 --merge 1 --batch-sizes 1 4 --rounds 1 --warmup 0
           --images-per-round 8 --flops-images 4 --no-memory --threads 1)
    ARCH=(--arch micro --batch-sizes 2 --fractions 0.5 --rounds 1 --warmup 0 --images-per-round 4 --flops-images 4 --no-memory --threads 1)
    DYN=(--arch micro --batch-sizes 2 --rounds 1 --warmup 0 --images-per-round 4 --threads 1)
    DTYPES=(fp32)
else
    DEVICE=cuda
    RESULTS=benchmarks/results
    "$PY" -c "import torch, sys; torch.cuda.is_available() or sys.exit('gpu.sh: no CUDA device here; --smoke runs on the CPU')"
    PLANE=(--batch-sizes 1 8 64 256 1024 --rounds 5)
    ARCH=(--arch vit_small_patch16_224 --img-size 224 --batch-sizes 1 8 64 256 --rounds 5 --fractions 0.5 0.33)
    DYN=(--arch vit_tiny_patch16_224 --img-size 224 --batch-sizes 1 8 64 256 1024 --rounds 5)
    DTYPES=(fp32 bf16)
fi

wanted() {  # wanted PART DONE_FILE: run unless excluded by --only or already written (without --force)
    if [[ ${#ONLY[@]} -gt 0 && ! " ${ONLY[*]} " =~ " $1 " ]]; then return 1; fi
    if [[ $FORCE == 0 && -s "$2" ]]; then echo "gpu.sh: $1 already written ($2); --force redoes it"; return 1; fi
    echo "gpu.sh: $1 -> $2 ($(date +%T))"
}

for dt in "${DTYPES[@]}"; do
    out=$RESULTS/plane_shapes_${DEVICE}_$dt
    if wanted plane "$out/plane.md"; then
        "$PY" train/compare.py --device "$DEVICE" --dtype "$dt" "${PLANE[@]}" --out "$out"
    fi
done
out=$RESULTS/plane_arch_vit_small_224_${DEVICE}_bf16
[[ $SMOKE == 1 ]] && out=$RESULTS/plane_arch_smoke
if wanted arch "$out/plane.md"; then
    "$PY" train/compare.py --device "$DEVICE" --dtype "${DTYPES[-1]}" "${ARCH[@]}" --out "$out"
fi
out=$RESULTS/arch_vit_tiny_224_${DEVICE}_bf16
[[ $SMOKE == 1 ]] && out=$RESULTS/arch_smoke
if wanted dynamic "$out/benchmark.md"; then
    "$PY" train/benchmark.py --device "$DEVICE" --dtype "${DTYPES[-1]}" "${DYN[@]}" --out "$out"
fi
if wanted env "$RESULTS/env_$DEVICE/env_throughput.md"; then
    VITSKIP_BENCH_DEVICE=$DEVICE VITSKIP_BENCH_RESULTS=$RESULTS/env_$DEVICE \
        "$PY" -m pytest -q -p no:cacheprovider -m benchmark tests/benchmarks/bench_env.py -k "test_env_throughput and not skip_exit"
fi
if wanted nsga2 "$RESULTS/nsga2_$DEVICE/nsga2_vectorised.md"; then
    VITSKIP_BENCH_DEVICE=$DEVICE VITSKIP_BENCH_RESULTS=$RESULTS/nsga2_$DEVICE \
        "$PY" -m pytest -q -p no:cacheprovider -m benchmark tests/benchmarks/bench_nsga2.py
fi
echo "gpu.sh: done ($(date +%T)); results under $RESULTS"
