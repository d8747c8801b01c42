#!/usr/bin/env bash
# Everything the GPU-only parts of issues 3, 4 and 5 need, on the lent GPU machine, in steps
# that fit its 10-minute calls (docs/benchmarks.md, "GPU session", has the plan and timings).
#
# Here, once (downloads four pure-Python wheels from PyPI and copies the CIFAR-10 archive;
# both folders are git-ignored):
#   bash benchmarks/device_session.sh prepare
# There, in device calls with carry [".whl", "data/cifar10-jpg.tar.gz"]:
#   bash benchmarks/device_session.sh tests bench overhead
#   EPOCHS=20 bash benchmarks/device_session.sh split_factor spectral_norm
#   EPOCHS=20 bash benchmarks/device_session.sh methods report
#
# Steps:
#   prepare        (here) wheels into .whl/, data/cifar10-jpg.tar.gz
#   tests          the CUDA tests (tests/test_cuda.py and the two CUDA metric tests)
#   bench          benchmarks/attribution_throughput.py on CUDA (issue 3)
#   overhead       benchmarks/callback_overhead.py on CUDA (issue 4)
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
# the start of this script after which no new fit starts and a running one is told to stop:
# 540), ACC (gpu), DATA (/tmp/cifar10: where the archive is unpacked), RUNS (runs), REPORTS
# (reports), EXTRA_ARGS (more CLI arguments for every fit), PY (python3). Results go to $OUT
# (the device tool's folder; /tmp/out elsewhere): logs, JSON, and runs.tar.gz /
# reports.tar.gz (event files, CSVs, configs; no checkpoints).
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
EXTRA=()
[ -n "${EXTRA_ARGS:-}" ] && read -r -a EXTRA <<<"$EXTRA_ARGS"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && { awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 2; }
if ! [[ $EPOCHS =~ ^[0-9]+$ ]] || (( EPOCHS < 2 || EPOCHS % 2 )); then
  echo "EPOCHS must be an even number >= 2, got $EPOCHS" >&2; exit 2
fi
for step in "${STEPS[@]}"; do
  case $step in
    prepare | tests | bench | overhead | split_factor | spectral_norm | methods | report) ;;
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
    tests)
      "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
        tests/test_metrics.py::test_metrics_on_cuda_match_cpu \
        tests/test_superpixels.py::test_group_on_cuda_matches_cpu 2>&1 | tee "$OUT/tests.log" ;;
    bench)
      "$PY" benchmarks/attribution_throughput.py --device cuda --data "$DATA/test" \
        --out "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.md" ;;
    overhead)  # the callback's defaults (fp32 passes), then with bf16 + channels_last passes
      "$PY" benchmarks/callback_overhead.py --data "$DATA" --device cuda --epochs 4 \
        --workers "$WORKERS" --out "$OUT/overhead.json" 2>&1 | tee "$OUT/overhead.log"
      "$PY" benchmarks/callback_overhead.py --data "$DATA" --device cuda --epochs 4 \
        --workers "$WORKERS" --attr-precision bf16 --channels-last \
        --out "$OUT/overhead_bf16.json" 2>&1 | tee -a "$OUT/overhead.log" ;;
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
