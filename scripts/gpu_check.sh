#!/usr/bin/env bash
# One GPU check, ready to run (issue 23, item 6): at most ~8 minutes on one H100/H200, it prints
#   1. training throughput of EDSR-baseline and RCAN x4: plain fp32, plain bf16, plain bf16 +
#      channels_last, Lightning bf16-mixed + channels_last (benchmarks/train_throughput.py);
#   2. the same with torch.compile, EDSR-baseline only (RCAN's 800+ layers compile for minutes);
#   3. batched vs per-image I-FGSM, fp32 and bf16 (benchmarks/attack_throughput.py);
#   4. per-sample gradients, vmap vs a loop (benchmarks/backdoor_gradients.py);
#   5. the data loader vs device-resident batches (benchmarks/data_throughput.py --train);
#   6. a 3-minute slice of the DIV2K BadSR recipe (configs/train/badsr_edsr_x4_div2k.yaml, one device) on
#      generated stand-in data (lit_sr.standins: DIV2K-shaped folders, random substitute/clean
#      weights and a random AlexNet file for LPIPS: its numbers measure speed, not the attack).
# Each step has its own time limit; a step that fails or runs out is reported and the others go on;
# the exit code is 1 when any step failed. Logs and JSON under $OUT (default runs/gpu_check).
#
#   scripts/gpu_check.sh              # on the GPU machine (see ../shared/GPU.md for the wheels line)
#   scripts/gpu_check.sh --cpu        # the same script at toy size on the CPU (tests/test_gpu_check.py)
#
# On the lent machine (GPU.md): install the wheels into /tmp/site, then
#   export PYTHONPATH=/tmp/site:$PWD; OUT=$OUT scripts/gpu_check.sh
set -uo pipefail

MODE=gpu
if [[ "${1:-}" == "--cpu" ]]; then MODE=cpu; shift; fi
if [[ $# -gt 0 ]]; then echo "usage: scripts/gpu_check.sh [--cpu]   (unknown argument: $1)" >&2; exit 2; fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
OUT=$(mkdir -p "${OUT:-runs/gpu_check}" && cd "${OUT:-runs/gpu_check}" && pwd)
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$REPO"

if [[ $MODE == gpu ]]; then
  DEV=cuda; Q=(); SLICE_S=180
  T_TRAIN=110; T_COMPILE=90; T_ATTACK=50; T_GRAD=40; T_DATA=60; T_SLICE=230
  TRAIN_ARGS=(--archs edsr rcan --steps 30 --warmup 5)
  ATTACK_ARGS=(--train-steps 50)
  GRAD_ARGS=(--samples 256 --naive-samples 32 --pools 1000 --generations 20 --repeats 2)
  DATA_ARGS=(--images 4 --modes raw shared_cache --workers 0 8 --train-steps 40 --train-warmup 10)
  STANDIN=(div2k_size="(480, 480)" div2k_train=24 div2k_val=2)
  SLICE_ARGS=(--data.init_args.base.init_args.batch_size 16)
  SUBSTITUTE="dict(num_feat=64, num_block=16, res_scale=1.0, img_range=255.0, rgb_mean=[0.4488, 0.4371, 0.4040])"
else
  DEV=cpu; Q=(--quick); SLICE_S=20
  # CPU limits are a safety net only (a loaded shared CPU runs these toy steps 10x slower than idle)
  T_TRAIN=300; T_COMPILE=0; T_ATTACK=300; T_GRAD=300; T_DATA=300; T_SLICE=300
  TRAIN_ARGS=(--archs edsr --steps 1 --warmup 0)   # RCAN's tiny variant adds only time here
  ATTACK_ARGS=(--train-steps 2 --steps 2 --batch 2 --num-feat 8 --num-block 1)
  GRAD_ARGS=(--samples 4 --naive-samples 2 --pools 100 --generations 2 --population 4 --repeats 1 --evaluations sparse)
  DATA_ARGS=(--images 1 --height 96 --width 96 --patch 32 --batch 2 --modes raw --workers 0 --batches 2 --no-train)
  # toy size: 128 px HR (the trigger's LPIPS -- AlexNet: a stride-4 conv, then two 3x3/2 max-pools -- needs an
  # LR of at least 31 px), 10 training images (poison_rate 0.1: one poisoned image, candidate_rate 0.25: 3
  # candidates), and the recipe's EDSR-baseline (victim, substitute, clean reference) cut to 8 features x 1
  # block: the slice runs the recipe's whole pipeline (trigger, labels, selection callbacks, summary) in seconds.
  # The recipe at its own network size on CPU: tests/test_every_recipe.py.
  STANDIN=(div2k_size="(128, 128)" div2k_train=10 div2k_val=1 scales="(4,)" weights=True)
  SUBSTITUTE="dict(num_feat=8, num_block=1, res_scale=1.0, img_range=255.0, rgb_mean=[0.4488, 0.4371, 0.4040])"
  TOY="{num_feat: 8, num_block: 1, res_scale: 1.0, img_range: 255.0, rgb_mean: [0.4488, 0.4371, 0.4040]}"
  SLICE_ARGS=(--data.init_args.base.init_args.batch_size 1 --data.init_args.base.init_args.patch_size 32
              --data.init_args.base.init_args.num_workers 0 --data.init_args.trigger.init_args.steps 1
              --data.init_args.poisoned_hr_steps 1 --trainer.precision 32-true --trainer.limit_val_batches 1
              --trainer.max_steps 2 --model.init_args.arch_kwargs "$TOY"
              --data.init_args.substitute.init_args.arch_kwargs "$TOY")
fi

FAILED=()
declare -A SECONDS_TAKEN STATUS
step() {  # step NAME LIMIT_S CMD...: run CMD in its own log, within LIMIT_S seconds
  local name=$1 limit=$2; shift 2
  if [[ $limit -le 0 ]]; then STATUS[$name]="skipped (${MODE} mode)"; echo "== $name: skipped"; return; fi
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  SECONDS_TAKEN[$name]=$((SECONDS - start))
  if [[ $rc -eq 0 ]]; then STATUS[$name]=ok
  elif [[ $rc -eq 124 || $rc -eq 130 || $rc -eq 137 ]]; then STATUS[$name]="timed out"; FAILED+=("$name")
  else STATUS[$name]="failed (exit $rc)"; FAILED+=("$name"); fi
  # the step's own table: its output after the last progress bar
  grep -v -E "it/s|s/it|run/s|Warning|warn" "$OUT/$name.log" | tail -n 15
  echo "-- $name: ${STATUS[$name]} in ${SECONDS_TAKEN[$name]} s (log $OUT/$name.log)"
}

cd "$REPO/benchmarks"   # the benchmarks import their shared helpers (common.py) from beside them
"$PY" -c "import torch; print('torch', torch.__version__, '| device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
step train_throughput "$T_TRAIN" "$PY" train_throughput.py --device "$DEV" "${Q[@]}" "${TRAIN_ARGS[@]}" --bf16-plain \
  --out "$OUT/train_throughput.json"
step train_compiled "$T_COMPILE" "$PY" train_throughput.py --device "$DEV" "${Q[@]}" --archs edsr --compile \
  --steps 30 --warmup 3 --out "$OUT/train_compiled.json"
step ifgsm_batched_vs_per_image "$T_ATTACK" "$PY" attack_throughput.py --device "$DEV" "${Q[@]}" "${ATTACK_ARGS[@]}" \
  --out "$OUT/attack_throughput.json"
step per_sample_grads_vmap_vs_loop "$T_GRAD" "$PY" backdoor_gradients.py --device "$DEV" "${Q[@]}" "${GRAD_ARGS[@]}" \
  --out "$OUT/backdoor_gradients.json"
step loader_vs_device_batches "$T_DATA" "$PY" data_throughput.py --device "$DEV" "${Q[@]}" "${DATA_ARGS[@]}" \
  --work-dir "$OUT/data_throughput_files" --out "$OUT/data_throughput.json"

# 6. the DIV2K BadSR recipe on stand-in data, in its own folder so the recipe's relative paths
# (runs/edsr_x4_div2k/version_0/weights.pth, runs/poison_cache) land there
SLICE="$OUT/badsr_div2k_slice"
rm -rf "$SLICE" && mkdir -p "$SLICE" && cd "$SLICE" || exit 1
ARGS=$(IFS=,; echo "${STANDIN[*]}")
if "$PY" -c "
from lit_sr.standins import write_standins, write_random_weights
write_standins('data', $ARGS)
write_random_weights('runs/edsr_x4_div2k/version_0/weights.pth', 'edsr', $SUBSTITUTE)
" >"$OUT/standins.log" 2>&1; then
  D="$SLICE/data/DIV2K"
  TORCH_HOME="$SLICE/data" step badsr_div2k_slice "$T_SLICE" "$PY" "$REPO/train.py" fit \
    --config "$REPO/configs/train/badsr_edsr_x4_div2k.yaml" \
    --trainer.devices 1 --trainer.strategy auto --trainer.max_time "00:00:00:$SLICE_S" \
    --data.init_args.base.init_args.train_hr "$D/DIV2K_train_HR" \
    --data.init_args.base.init_args.train_lr "$D/DIV2K_train_LR_bicubic/X4" \
    --data.init_args.base.init_args.val_hr "$D/DIV2K_valid_HR" \
    --data.init_args.base.init_args.val_lr "$D/DIV2K_valid_LR_bicubic/X4" \
    --data.init_args.base.init_args.cache_dir "$SLICE/cache" "${SLICE_ARGS[@]}"
  grep -a -o -E "Epoch [0-9]+: +[0-9]+%[^]]*]" "$OUT/badsr_div2k_slice.log" | tail -n 1
else
  STATUS[badsr_div2k_slice]="failed (stand-in data: see $OUT/standins.log)"; FAILED+=(badsr_div2k_slice)
fi

echo
echo "gpu_check ($MODE) summary:"
for name in train_throughput train_compiled ifgsm_batched_vs_per_image per_sample_grads_vmap_vs_loop \
            loader_vs_device_batches badsr_div2k_slice; do
  printf "  %-32s %-24s %s s\n" "$name" "${STATUS[$name]:-not run}" "${SECONDS_TAKEN[$name]:--}"
done
[[ ${#FAILED[@]} -eq 0 ]] || { echo "failed: ${FAILED[*]}"; exit 1; }
