#!/usr/bin/env bash
# The five studies of docs/results_protocol.md on the real CIFAR-10 JPEGs, three seeds each:
# the recipe configs/experiments/cpu/fast_cifar10.yaml (K = 2 airbench CNNs, 16 epochs) with
# the monitor configs/experiments/cpu/cifar_studies.yaml (the last epoch). One CLI call per fit;
# seed s sets seed_everything, the models' init_seed and the data's split_seed.
#
#   mkdir -p data && tar -xzf ../shared/data/cifar10-jpg.tar.gz -C data   # once
#   bash benchmarks/run_cifar_studies.sh                  # every fit, then the reports
#   SEEDS="0" bash benchmarks/run_cifar_studies.sh sf2    # one setting, one seed
#
# Settings: sf2 (studies a, b, b2, b3, c, c2, e), sf4 sf8 sf16 (a, a2), sn1 sn4 (d: spectral
# norm factor 1 and 4 at split factor 2), report. A fit whose run folder holds a finished CSV
# is skipped, so the script resumes. Every fit's wall and CPU time go to runs/cifar/timings.txt.
# About 47 CPU-minutes per sf2 fit on this machine (one thread); the whole sweep about 7 h.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
CLI=${CLI:-lightning-saliency}
SEEDS=${SEEDS:-"0 1 2"}
CFG=configs/experiments/cpu
mkdir -p runs/cifar

fit() {  # fit <name> <seed> [extra CLI arguments]
  local name=$1 seed=$2
  shift 2
  local run="runs/cifar/$name/seed$seed"
  if [[ -f "$run/interpretation_metrics.csv" ]]; then
    echo "skip $run (done)"
    return
  fi
  local t0
  t0=$(date +%s)
  /usr/bin/time -f "%U %S" -o "runs/cifar/.cpu-$name-$seed" "$CLI" fit \
    --config "$CFG/fast_cifar10.yaml" --config "$CFG/cifar_studies.yaml" \
    --seed_everything "$seed" --model.init_seed "$seed" --data.init_args.split_seed "$seed" \
    --trainer.logger.init_args.name "$name" --trainer.logger.init_args.version "seed$seed" \
    --trainer.enable_progress_bar false "$@"
  read -r user sys <"runs/cifar/.cpu-$name-$seed"
  echo "$name seed$seed wall_s=$(($(date +%s) - t0)) cpu_s=$(echo "$user + $sys" | bc)" \
    >>runs/cifar/timings.txt
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
    report)  # over the settings that were run
      local sf=() sn=()
      for d in runs/cifar/sf2 runs/cifar/sf4 runs/cifar/sf8 runs/cifar/sf16; do
        [[ -d $d ]] && sf+=("$d")
      done
      for d in runs/cifar/sn1 runs/cifar/sn4; do [[ -d $d ]] && sn+=("$d"); done
      if [[ ${#sf[@]} -gt 0 ]]; then "$CLI" report "${sf[@]}" --out reports/cifar/split_factor; fi
      if [[ -d runs/cifar/sf2 ]]; then "$CLI" report runs/cifar/sf2 --out reports/cifar/methods; fi
      if [[ ${#sn[@]} -gt 0 ]]; then "$CLI" report "${sn[@]}" --out reports/cifar/spectral_norm; fi ;;
    *) echo "unknown step $1 (sf2 sf4 sf8 sf16 sn1 sn4 report)" >&2; exit 2 ;;
  esac
}

if [[ $# -eq 0 ]]; then set -- sf2 sf16 sf4 sf8 sn1 sn4 report; fi
for s in "$@"; do step "$s"; done
