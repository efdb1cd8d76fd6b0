#!/usr/bin/env bash
# Run several learning rows at once on the GPUs of one host, then pack results and logs in one file.
#
#   benchmarks/learning/gpu_rows.sh OUT_DIR "detection:2600 caption referring" [--set key=value ...]
#
# A row may carry its own step count (row:steps, train.max_steps of that row), seed (row%1:
# train.seed, results and logs named <row>_seed1, so one row can run with several seeds to measure
# its spread) and GPU (row@2), in that order (row:steps%seed@gpu); --set applies to all.
# Rows go to GPUs round-robin (CUDA_VISIBLE_DEVICES), several to a GPU when there are more rows than
# GPUs: the `small` preset leaves most of an H100/H200 idle, and each row still has its own time
# limit (train.time_limit_minutes). The synthetic benchmark is written once, before the rows start.
# Real COCO rows read ../shared/data/coco_tiny_train, or .data/coco_tiny_train where that is absent
# (the GPU machine gets only the repository). Leaves OUT_DIR/learning.tgz with results/ (JSON + PNG
# per row) and logs/.
set -u
out=${1:?usage: gpu_rows.sh OUT_DIR "ROWS" [--set k=v ...]}
row_list=${2:?usage: gpu_rows.sh OUT_DIR "ROWS" [--set k=v ...]}
shift 2
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PIXTOK_CACHE=${PIXTOK_CACHE:-/tmp/pixtok-cache}
# many rows share a host: without a cap every process starts one CPU thread per core for torch and
# numpy, and their post-training CPU work (scoring, pictures) thrashes
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} MKL_NUM_THREADS=${MKL_NUM_THREADS:-4}
# ROW_TIMEOUT (seconds) ends a row that runs past it, so the others' results still get packed
row_timeout=${ROW_TIMEOUT:-0}
work=${LEARNING_WORK:-/tmp/learning}
mkdir -p "$work/results" "$work/logs" "$out"
gpus=$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")

coco=../shared/data/coco_tiny_train
[ -d "$coco" ] || coco=.data/coco_tiny_train
start=$(date +%s)
pack() {  # results and logs so far, replaced atomically (rows finish at different times)
  tar czf "$out/.learning.tgz.$$.$BASHPID" -C "$work" results logs 2>/dev/null &&
    mv -f "$out/.learning.tgz.$$.$BASHPID" "$out/learning.tgz"
}
python3 - "$@" <<'EOF'
import sys, time
sys.path.insert(0, "benchmarks/learning")
from run import row_config
from pixtok.training.recipe import synthetic_root
t = time.time()
root = synthetic_root(row_config("detection"))
print(f"synthetic benchmark at {root} ({time.time() - t:.0f} s)", flush=True)
EOF

parse() {  # entry -> row, name (row or row_seedN), extra run.py arguments; gpu when given
  local entry=$1
  case $entry in *@*) gpu=${entry##*@}; entry=${entry%@*} ;; esac
  extra=()
  name=${entry%%[:%]*}
  row=$name
  case $entry in *%*) local seed=${entry##*%}; name=${row}_seed$seed; entry=${entry%\%*}
                      extra+=(--set "train.seed=$seed" --name "$name") ;; esac
  [ "$entry" != "$row" ] && extra+=(--set "train.max_steps=${entry#*:}")
  return 0
}

i=0
for entry in $row_list; do
  gpu=$((i % gpus))
  parse "$entry"
  case $row in
    coco_tiny*) extra+=(--set "data.paths.annotations=$coco/annotations/instances_train2017.json"
                       --set "data.paths.images=$coco/train2017") ;;
  esac
  (CUDA_VISIBLE_DEVICES=$gpu timeout "$row_timeout" python3 benchmarks/learning/run.py "$row" \
    --output-dir "$work/runs/$name" --results "$work/results" "${extra[@]}" "$@" \
    > "$work/logs/$name.log" 2>&1; echo "exit $? after $(( $(date +%s) - start )) s" >> "$work/logs/$name.log"; pack) &
  echo "started $name on GPU $gpu"
  i=$((i + 1))
done
(while sleep 60; do pack; done) &
packer=$!
wait $(jobs -p | grep -v "^$packer$")
kill $packer 2>/dev/null
echo "all rows done in $(( $(date +%s) - start )) s"
for entry in $row_list; do
  parse "$entry"
  echo "=== $name"; grep -v "it/s\]\|s/it\]" "$work/logs/$name.log" | tail -6
done
pack
nvidia-smi --query-gpu=index,memory.used --format=csv 2>/dev/null | head -5
