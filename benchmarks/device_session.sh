#!/usr/bin/env bash
# The GPU work of issues 3, 4, 5 and 14 on the lent GPU machine. Issue 14's figures (engine vs
# Captum, callback overhead, bf16 agreement) come from ONE device call of under ten minutes:
# step `gpu` (docs/benchmarks.md, "GPU session"); the training studies of issue 5 are further,
# optional calls.
#
# Here, once (downloads four pure-Python wheels from PyPI and copies the CIFAR-10 archive;
# both folders are git-ignored):
#   bash benchmarks/device_session.sh prepare
# There, in device calls with carry [".whl", "data/cifar10-jpg.tar.gz"]:
#   bash benchmarks/device_session.sh gpu                  # issue 14: first, < 10 minutes
#   EPOCHS=20 bash benchmarks/device_session.sh split_factor spectral_norm
#   EPOCHS=20 bash benchmarks/device_session.sh methods report
#
# Steps:
#   prepare        (here) wheels into .whl/, data/cifar10-jpg.tar.gz
#   gpu            tests bench overhead bf16, each started only if the deadline leaves it time
#                  and stopped (timeout) before the deadline; what ran is in session.log
#   tests          the CUDA tests (tests/test_cuda.py and the two CUDA metric tests)
#   bench          benchmarks/attribution_throughput.py on CUDA, ResNet-18 at 32 and 224 px,
#                  TF32 off (issues 3, 14): Captum fp32, ours fp32, ours folded fp32 and bf16
#   overhead       benchmarks/callback_overhead.py: the monitor timed inside each epoch, fp32
#                  then bf16 + channels_last passes (issues 4, 14); keeps the fp32 fit's models
#   bf16           benchmarks/bf16_map_agreement.py on the models the overhead step trained
#   split_factor   study (a): configs/experiments/split_factor.yaml, sf 2 4 8 16, each with
#                  EPOCHS x sf / 2 epochs (the same number of optimizer steps: docs/results.md
#                  (a') shows that equal epochs confound data size with training length)
#   spectral_norm  study (d): configs/experiments/spectral_norm.yaml, c in $FACTORS
#                  (baseline: split_factor/sf2, the same models without normalization)
#   methods        studies (b), (c), (e): configs/experiments/methods.yaml (one run), then
#                  benchmarks/bf16_map_agreement.py on its two trained models
#   report         lightning-saliency report for every study found under runs/
# Environment: EPOCHS (10; a multiple of 2: validation and the callback run at EPOCHS/2 and
# EPOCHS),
# FACTORS ("0.5 1 4"), WORKERS (12), TRAIN_PRECISION (bf16-mixed), DEADLINE (seconds from
# the start of this script after which no new fit or step starts and a running one is told
# to stop: 540), ACC (gpu), DATA (/tmp/cifar10: where the archive is unpacked), RUNS (runs),
# REPORTS (reports), EXTRA_ARGS (more CLI arguments for every fit), PY (python3), QUICK
# (1: toy sizes for bench/overhead/bf16, a CPU dry run), OVERHEAD_ARGS (more arguments for
# callback_overhead.py). Results go to $OUT (the device tool's folder; /tmp/out elsewhere):
# logs, JSON, and runs.tar.gz / reports.tar.gz (event files, CSVs, configs; no checkpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
EPOCHS=${EPOCHS:-10}
FACTORS=${FACTORS:-"0.5 1 4"}
WORKERS=${WORKERS:-12}
TRAIN_PRECISION=${TRAIN_PRECISION:-bf16-mixed}
DEADLINE=${DEADLINE:-540}
ACC=${ACC:-gpu}
OUT=${OUT:-/tmp/out}
DATA=${DATA:-/tmp/cifar10}
RUNS=${RUNS:-runs}
REPORTS=${REPORTS:-reports}
PY=${PY:-python3}
QUICK=${QUICK:-}
DEV=$([ "$ACC" = cpu ] && echo cpu || echo cuda)
EXTRA=()
[ -n "${EXTRA_ARGS:-}" ] && read -r -a EXTRA <<<"$EXTRA_ARGS"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && { awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 2; }
if ! [[ $EPOCHS =~ ^[0-9]+$ ]] || (( EPOCHS < 2 || EPOCHS % 2 )); then
  echo "EPOCHS must be an even number >= 2, got $EPOCHS" >&2; exit 2
fi
for step in "${STEPS[@]}"; do
  case $step in
    prepare | gpu | tests | bench | overhead | bf16 | split_factor | spectral_norm | methods \
      | report) ;;
    *) echo "unknown step $step (see the top of $0)" >&2; exit 2 ;;
  esac
done

prepare() {
  mkdir -p .whl data
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl captum==0.9.0 \
    jsonargparse==4.53.0 typeshed-client==2.14.0 docstring-parser==0.18.0
  [ -f data/cifar10-jpg.tar.gz ] || cp ../shared/data/cifar10-jpg.tar.gz data/
  ls -la .whl data/cifar10-jpg.tar.gz
}

setup() {  # there: carried wheels, the repository on PYTHONPATH, the images unpacked once
  mkdir -p "$OUT"
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
  else
    export PYTHONPATH=$PWD
  fi
  if [ ! -d "$DATA/train" ]; then
    [ -f data/cifar10-jpg.tar.gz ] || { echo "data/cifar10-jpg.tar.gz is missing: carry it" >&2; exit 2; }
    mkdir -p "$(dirname "$DATA")" && tar xzf data/cifar10-jpg.tar.gz -C "$(dirname "$DATA")"
  fi
  export PYTHONUNBUFFERED=1
  "$PY" - <<'EOF' | tee -a "$OUT/session.log"
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__,
      "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
EOF
}

left() { echo $((DEADLINE - (SECONDS - START))); }

timed() {  # timed NAME NEED CMD...: run CMD if NEED seconds are left, stopped by the deadline
  local name=$1 need=$2; shift 2
  local remaining; remaining=$(left)
  if (( remaining < need )); then
    echo "skipped $name: ${remaining}s left before the deadline, ${need}s needed" \
      | tee -a "$OUT/session.log"
    return 0
  fi
  local t0=$SECONDS status=0
  timeout --signal=INT --kill-after=15 $((remaining - 10)) "$@" || status=$?
  echo "$name status=$status $((SECONDS - t0))s" | tee -a "$OUT/session.log"
}

bench() {
  local q=(--cases resnet18_32 resnet18_224 --repeats 3 --segmenters)
  [ -n "$QUICK" ] && q=(--quick --cases resnet18_32 --segmenters --skip-memory-budget)
  timed bench 150 "$PY" benchmarks/attribution_throughput.py --device "$DEV" --tf32 off \
    --data "$DATA/test" "${q[@]}" --out "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.md"
}

overhead() {  # the callback's defaults (fp32 passes), then bf16 + channels_last passes
  local q=(--epochs 3 --workers "$WORKERS")
  [ -n "$QUICK" ] && q=(--epochs 2 --workers 0 --backbone small_cnn --limit-train-batches 2
    --probes 4)
  local extra=()
  [ -n "${OVERHEAD_ARGS:-}" ] && read -r -a extra <<<"$OVERHEAD_ARGS"
  mkdir -p "$RUNS"
  timed overhead_fp32 120 "$PY" benchmarks/callback_overhead.py --data "$DATA" --device "$DEV" \
    --tf32 off "${q[@]}" "${extra[@]}" --log-dir "$RUNS/benchmarks" \
    --save-checkpoint "$RUNS/overhead_models.ckpt" --out "$OUT/overhead.json" 2>&1 \
    | tee "$OUT/overhead.log"
  timed overhead_bf16 120 "$PY" benchmarks/callback_overhead.py --data "$DATA" --device "$DEV" \
    --tf32 off "${q[@]}" "${extra[@]}" --log-dir "$RUNS/benchmarks" --attr-precision bf16 \
    --channels-last --precision "$TRAIN_PRECISION" --out "$OUT/overhead_bf16.json" 2>&1 \
    | tee -a "$OUT/overhead.log"
}

bf16() {  # bf16 against fp32 maps on the models the overhead step trained
  if [ ! -f "$RUNS/overhead_models.ckpt" ]; then
    echo "skipped bf16: no $RUNS/overhead_models.ckpt (run the overhead step first)" \
      | tee -a "$OUT/session.log"
    return 0
  fi
  timed bf16 45 "$PY" benchmarks/bf16_map_agreement.py "$RUNS/overhead_models.ckpt" \
    --data "$DATA/test" --device "$DEV" --probes "$([ -n "$QUICK" ] && echo 8 || echo 256)" \
    --out "$OUT/bf16_trained.json" 2>&1 | tee -a "$OUT/session.log"
}

cuda_tests() {
  timed tests 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    tests/test_metrics.py::test_metrics_on_cuda_match_cpu \
    tests/test_superpixels.py::test_group_on_cuda_matches_cpu 2>&1 | tee "$OUT/tests.log"
}

fit() {  # fit NAME CONFIG ARGS...: one training run, skipped when the deadline is near
  local name=$1 config=$2; shift 2
  local remaining; remaining=$(left)
  if (( remaining < 60 )); then
    echo "skipped $name: ${remaining}s left before the deadline" | tee -a "$OUT/session.log"
    return 0
  fi
  local t0=$SECONDS status=0 limit=$((remaining - 30)) epochs=${E:-$EPOCHS}
  "$PY" -m lightning_saliency.cli fit --config "$config" --trainer.accelerator "$ACC" \
    --trainer.max_epochs "$epochs" --trainer.precision "$TRAIN_PRECISION" \
    --trainer.callbacks.init_args.every_n_epochs $((epochs / 2)) \
    --trainer.check_val_every_n_epoch $((epochs / 2)) \
    --trainer.max_time "$(printf '00:00:%02d:%02d' $((limit / 60)) $((limit % 60)))" \
    --trainer.enable_checkpointing false --trainer.logger.init_args.save_dir "$RUNS" \
    --trainer.enable_progress_bar false --data.init_args.root "$DATA" \
    --data.init_args.num_workers "$WORKERS" "$@" "${EXTRA[@]}" >>"$OUT/fits.log" 2>&1 \
    || status=$?
  echo "$name epochs=$epochs precision=$TRAIN_PRECISION status=$status $((SECONDS - t0))s" \
    | tee -a "$OUT/session.log"
  pack
}

pack() {  # what comes back: the run folders without checkpoints, and the reports
  [ -d "$RUNS" ] && tar czf "$OUT/runs.tar.gz" --exclude='*.ckpt' -C "$(dirname "$RUNS")" "$(basename "$RUNS")"
  [ -d "$REPORTS" ] && tar czf "$OUT/reports.tar.gz" -C "$(dirname "$REPORTS")" "$(basename "$REPORTS")"
  return 0
}

for step in "${STEPS[@]}"; do
  [ "$step" = prepare ] || [ -n "${READY:-}" ] || { setup; READY=1; }
  case $step in
    prepare) prepare ;;
    gpu) cuda_tests; bench; overhead; bf16; pack ;;
    tests) cuda_tests ;;
    bench) bench ;;
    overhead) overhead ;;
    bf16) bf16 ;;
    split_factor)  # the same number of optimizer steps for every sf: EPOCHS x sf / 2 epochs
      for sf in 2 4 8 16; do
        E=$((EPOCHS * sf / 2)) fit split_factor/sf$sf configs/experiments/split_factor.yaml \
          --data.init_args.split_factor $sf --trainer.logger.init_args.version sf$sf
      done ;;
    spectral_norm)
      for c in $FACTORS; do
        fit spectral_norm/c$c configs/experiments/spectral_norm.yaml \
          --model.spectral_norm_factor "$c" --trainer.logger.init_args.version c$c
      done ;;
    methods)  # then bf16 against fp32 maps on these trained models (issue 3's 0.01 target)
      fit methods/sf2 configs/experiments/methods.yaml \
        --trainer.logger.init_args.version sf2 --trainer.enable_checkpointing true
      if compgen -G "$RUNS/methods/sf2/checkpoints/*.ckpt" >/dev/null; then
        "$PY" benchmarks/bf16_map_agreement.py "$RUNS/methods/sf2" --data "$DATA/test" \
          --device "$([ "$ACC" = cpu ] && echo cpu || echo cuda)" --probes 256 \
          --out "$OUT/bf16_trained.json" 2>&1 | tee -a "$OUT/session.log"
      fi ;;
    report)
      for study in split_factor spectral_norm methods; do
        [ -d "$RUNS/$study" ] || continue
        extra=()
        if [ $study = spectral_norm ] && [ -d "$RUNS/split_factor/sf2" ]; then
          extra=("$RUNS/split_factor/sf2")
        fi
        "$PY" -m lightning_saliency.cli report "$RUNS/$study" "${extra[@]}" \
          --out "$REPORTS/$study" 2>&1 | tee -a "$OUT/session.log"
      done
      pack ;;
  esac
done
