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
#            -> plane_arch_cuda_bf16
#   dynamic  train/benchmark.py --arch vit_tiny_patch16_224 at 224x224, bf16: DynamicViT vs static
#            -> arch_cuda_bf16
#   env      the env throughput benchmark (native vector env vs Gymnasium's sync) -> env_cuda
#   nsga2    the NSGA-II vectorised population scoring benchmark -> nsga2_cuda
#
# No uv sync: the interpreter is ${PYTHON:-python3} as it is (on the GPU machine: torch, timm,
# torchvision, pandas, pyarrow and matplotlib installed; the rest carried as wheels on PYTHONPATH).
# The imports are checked first and anything missing is named. All parts run in one Python process
# (benchmarks/gpu.py). The attention kernel is timm's fused scaled_dot_product_attention, recorded
# in each table with the device's name.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,23p' "$0"; exit 0; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu.py "$@"
