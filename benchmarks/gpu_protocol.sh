#!/usr/bin/env bash
# The GPU protocol: everything a session with a GPU runs, in one command (about 5 minutes on one H200).
#
#   bash benchmarks/gpu_protocol.sh            # results and logs in $OUT (default: benchmarks/results)
#
# 1. The entry scripts on CUDA, against diffusers' sequential samplers: the trained digits DiT in float32,
#    float16 and bfloat16, and the tiny SD3 / Flux / SDXL / Wan pipelines. Exactness on the device, not speed.
# 2. benchmarks/gpu_timing.py: full-size DiT-XL/2, SD 1.5 UNet, SD3-medium and FLUX.1-dev networks (fp16)
#    and the Wan 2.1 1.3B transformer (bf16), random weights: step vs parallel-iteration time per window,
#    the solver's own time, and the speed-ups implied at matched accuracy (max diff 1e-3) for the default
#    method and ParaDiGMS.
#
# On the lent device machine diffusers is missing: carry it as wheels in .whl (the device tool's README);
# they are installed to /tmp/site first when present. DEVICE=cpu smoke-tests this script on a CPU (tiny
# networks): the numbers then mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
DEVICE="${DEVICE:-cuda}"
if [ "$DEVICE" = cpu ]; then timing=(--device cpu --tiny --repeats 1); else timing=(); fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true; python3 -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)"; } \
    | tee "$OUT/gpu_machine.txt"

runs="$(mktemp -d)"
{
    for dtype in float32 float16 bfloat16; do
        python3 parallel_dit.py --model_path digits --class_labels 0 1 2 3 4 5 6 7 8 9 --timesteps 50 \
            --device "$DEVICE" --dtype "$dtype" --check_sequential --output_path "$runs"
    done
    for model in tiny-sd3 tiny-flux tiny-sdxl tiny-wan; do
        python3 parallel_sd.py --model_path "$model" --device "$DEVICE" --num_samples 2 --timesteps 28 \
            --check_sequential --prompt "a red cube" --output_path "$runs"
    done
} 2>&1 | grep -v "ParaTAA: " | tee "$OUT/gpu_scripts.log" || { status=$?; echo "gpu_protocol: the script checks FAILED (exit $status); timing anyway"; }

# Device time is scarce: the timing runs even when a check above failed; the exit status reports both.
python3 -m benchmarks.gpu_timing "${timing[@]}" --out_dir "$OUT" "$@" 2>&1 | tee "$OUT/gpu_timing.log"
exit "${status:-0}"
