#!/usr/bin/env bash
# The five studies of docs/results_protocol.md on the real CIFAR-10 JPEGs under protocol
# version 2 ("Version 2, 2026-12-05: power"; version 1's driver is in git history): the recipe
# configs/experiments/cpu/fast_cifar10.yaml (K = 2 airbench CNNs) trained for $EPOCHS epochs
# with the monitor configs/experiments/cpu/cifar_studies.yaml (the last epoch, the test-probe
# count chosen by benchmarks/power_study.py), study (d) included (sn1, sn4). One CLI call per
# fit; seed s (0-4) sets seed_everything, the models' init_seed and the data's split_seed. Runs go to
# runs/cifar-v2 (version 1's runs/cifar stay apart). Progress and results: docs/results.md.
#
#   mkdir -p data && tar -xzf ../shared/data/cifar10-jpg.tar.gz -C data   # once
#   bash benchmarks/run_cifar_studies.sh                  # every fit, then the reports
#   SEEDS="0" bash benchmarks/run_cifar_studies.sh sf2    # one setting, one seed
#
# Settings: sf2 (studies a, b, b2, b3, c, c2, e), sf4 sf8 sf16 (a, a2), sn1 sn4 (d: spectral
# norm factor 1 and 4 at split factor 2), report. A fit whose run folder holds the marker
# .finished (written after the CLI returned 0; the CSV itself is created when a fit starts)
# is skipped, and a fit killed part-way continues from its last epoch's checkpoint (the CLI's
# --ckpt_path; the data order and the monitor's state resume exactly, docs/experiments.md), so
# the script resumes. Two drivers may run side by side (one per core, e.g. one started with
# `sn1 sn4 sf16`): each fit is locked (flock) while it runs, and a locked fit is skipped.
# Every fit's wall and CPU time (per call) go to $ROOT/timings.txt.
# Version 1 (16 epochs) took about 47 CPU-minutes per sf2 fit on this machine (one thread) and
# reached 84.94% (the bar is 85%): version 2 trains 20 epochs: sf2 seed 0 took 3,917 CPU s
# and reached 85.25% / 85.13%. `accuracy` prints each model's last test accuracy per run.
set -euo pipefail
cd "$(dirname "$0")/.."
# One thread, always: training's floating-point sums depend on the thread count, and a
# control re-run with 2 threads moved per-seed numbers by up to 0.003 (docs/results.md);
# a protocol's fits must not mix counts.
if [[ -n ${OMP_NUM_THREADS:-} && $OMP_NUM_THREADS != 1 ]]; then
  echo "run_cifar_studies.sh: OMP_NUM_THREADS=$OMP_NUM_THREADS ignored: the protocol's fits run on one thread" >&2
fi
export OMP_NUM_THREADS=1
CLI=${CLI:-lightning-saliency}
SEEDS=${SEEDS:-"0 1 2 3 4"}  # version 2: the power study's seed rule chose 5
EPOCHS=${EPOCHS:-20}  # the monitor's every_n_epochs (cifar_studies.yaml) must equal it
ROOT=runs/cifar-v2
CFG=configs/experiments/cpu
if ! command -v "$CLI" >/dev/null; then  # before any fit: a missing CLI used to stop mid-queue
  echo "run_cifar_studies.sh: '$CLI' not found; activate the environment that installed" \
    "lightning-saliency (. .venv/bin/activate) or set CLI=/path/to/lightning-saliency" >&2
  exit 2
fi
mkdir -p "$ROOT"

fit() {  # fit <name> <seed> [extra CLI arguments]
  local name=$1 seed=$2
  shift 2
  local run="$ROOT/$name/seed$seed" lock
  if [[ -f "$run/.finished" ]]; then
    echo "skip $run (done)"
    return
  fi
  mkdir -p "$ROOT/.locks"  # one lock per fit: two drivers share the queue, never a fit
  exec {lock}>"$ROOT/.locks/$name-seed$seed"
  if ! flock -n "$lock"; then
    echo "skip $run (running in another driver)"
    exec {lock}>&-
    return
  fi
  if [[ -f "$run/.finished" ]]; then  # finished by another driver since the first look
    exec {lock}>&-
    return
  fi
  local t0 resume=() ckpt
  ckpt=$(ls -t "$run"/checkpoints/*.ckpt 2>/dev/null | head -1 || true)
  if [[ -n $ckpt ]]; then
    echo "resume $run from $ckpt"
    resume=(--ckpt_path "$ckpt")
  elif [[ -d $run ]]; then  # killed before its first checkpoint: start afresh, keep it aside
    mkdir -p "$ROOT/.killed"  # outside the setting's folder, which the report reads
    mv "$run" "$ROOT/.killed/$name-seed$seed-$(date +%s)"
    echo "moved aside $run (killed before its first checkpoint)"
  fi
  t0=$(date +%s)
  /usr/bin/time -f "%U %S" -o "$ROOT/.cpu-$name-$seed" "$CLI" fit \
    --config "$CFG/fast_cifar10.yaml" --config "$CFG/cifar_studies.yaml" \
    --seed_everything "$seed" --model.init_seed "$seed" --data.init_args.split_seed "$seed" \
    --trainer.max_epochs "$EPOCHS" --trainer.logger.init_args.save_dir "$ROOT" \
    --trainer.logger.init_args.name "$name" --trainer.logger.init_args.version "seed$seed" \
    --trainer.enable_progress_bar false "${resume[@]}" "$@"
  mkdir -p "$run" && touch "$run/.finished"
  exec {lock}>&-
  read -r user sys <"$ROOT/.cpu-$name-$seed"
  echo "$name seed$seed${ckpt:+ (resumed)} wall_s=$(($(date +%s) - t0)) cpu_s=$(echo "$user + $sys" | bc)" \
    >>"$ROOT/timings.txt"
}

finished() {  # finished <array name> <setting>...: append each setting's finished run folders
  local -n into=$1
  shift
  local name run
  for name in "$@"; do
    for run in "$ROOT/$name"/seed*; do
      [[ -d $run ]] || continue
      if [[ -f $run/.finished ]]; then into+=("$run"); else echo "report: $run left out (not finished)" >&2; fi
    done
  done
}

step() {
  case $1 in
    sf2) for s in $SEEDS; do fit sf2 "$s" --data.init_args.split_factor 2; done ;;
    sf4 | sf8 | sf16)
      for s in $SEEDS; do fit "$1" "$s" --data.init_args.split_factor "${1#sf}"; done ;;
    sn1 | sn4)
      for s in $SEEDS; do
        fit "$1" "$s" --data.init_args.split_factor 2 --model.spectral_norm_factor "${1#sn}"
      done ;;
    report)  # over the finished fits (a fit still running or killed part-way is left out)
      local sf=() sn=() sf2=()
      finished sf sf2 sf4 sf8 sf16
      finished sn sn1 sn4
      finished sf2 sf2
      # the protocol's bar: every model >= 85% at sf 2 (the plain recipe), else out of the verdicts
      local bar=(--min-accuracy 0.85@sf2)
      if [[ ${#sf[@]} -gt 0 ]]; then "$CLI" report "${sf[@]}" --out reports/cifar-v2/split_factor "${bar[@]}"; fi
      if [[ ${#sf2[@]} -gt 0 ]]; then "$CLI" report "${sf2[@]}" --out reports/cifar-v2/methods "${bar[@]}"; fi
      if [[ ${#sn[@]} -gt 0 ]]; then "$CLI" report "${sn[@]}" --out reports/cifar-v2/spectral_norm; fi ;;
    accuracy)  # each model's test accuracy at the last epoch, per run (the 85% bar at sf 2)
      "${PYTHON:-python}" - "$ROOT" <<'PY'
import sys
from pathlib import Path
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
for run in sorted(Path(sys.argv[1]).glob("*/seed*")):
    acc = EventAccumulator(str(run)).Reload()
    tags = sorted(t for t in acc.Tags()["scalars"] if t.startswith("val/model_") and t.endswith("/acc"))
    print(run, " ".join(f"{t}={acc.Scalars(t)[-1].value:.2%}" for t in tags))
PY
      ;;
    *) echo "unknown step $1 (sf2 sf4 sf8 sf16 sn1 sn4 report accuracy)" >&2; exit 2 ;;
  esac
}

if [[ $# -eq 0 ]]; then set -- sf2 sn1 sn4 sf16 sf4 sf8 report accuracy; fi
for s in "$@"; do step "$s"; done
