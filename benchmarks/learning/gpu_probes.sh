#!/usr/bin/env bash
# Run localization_probe.py arms at once on the GPUs of one host, then pack results and logs.
#
#   benchmarks/learning/gpu_probes.sh OUT_DIR SECONDS "name=--encoder vit --decoder t5" "name2=..." ...
#
# Every arm trains on the synthetic detection row (--data synthetic, bf16, batch 128, AdamW 5e-4,
# 200 warm-up steps) for SECONDS, with its own extra arguments; arms go to GPUs round-robin
# (CUDA_VISIBLE_DEVICES). The synthetic benchmark is written once, before the arms start. Leaves
# OUT_DIR/probes.tgz with <name>.json and <name>.log of every arm.
set -u
out=${1:?usage: gpu_probes.sh OUT_DIR SECONDS "name=args" ...}
seconds=${2:?usage: gpu_probes.sh OUT_DIR SECONDS "name=args" ...}
shift 2
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PIXTOK_CACHE=${PIXTOK_CACHE:-/tmp/pixtok-cache} OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
work=${PROBE_WORK:-/tmp/probes}
mkdir -p "$work" "$out"
gpus=$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")
python3 - <<'PY'
import sys
sys.path.insert(0, "benchmarks/learning")
from run import row_config
from pixtok.training.recipe import synthetic_root
print(f"synthetic benchmark at {synthetic_root(row_config('detection_no_seq_aug'))}", flush=True)
PY
i=0
for arm in "$@"; do
  name=${arm%%=*}
  # shellcheck disable=SC2086  # the arm's arguments are meant to split
  CUDA_VISIBLE_DEVICES=$((i % gpus)) timeout $((seconds + 240)) python3 \
    benchmarks/learning/localization_probe.py --data synthetic --device cuda --bf16 \
    --batch-size 128 --lr 5e-4 --warmup 200 --steps 100000 --workers 5 --time-limit "$seconds" \
    ${arm#*=} --out "$work/$name.json" >"$work/$name.log" 2>&1 &
  i=$((i + 1))
done
wait
for log in "$work"/*.log; do echo "== $log"; tail -n 2 "$log"; done
tar czf "$out/probes.tgz" -C "$work" .
