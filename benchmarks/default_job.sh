#!/usr/bin/env bash
# The default job (configs/default.yaml: digits, K = 2 small CNNs, 4 epochs, the callback at
# its defaults) timed with and without the callback, arms interleaved (ABAB...), one thread:
# wall and process CPU time of each whole `lightning-saliency fit`, in a fresh folder each.
#
#   bash benchmarks/default_job.sh [rounds]      # default 2 rounds
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
CLI=${CLI:-lightning-saliency}
ROUNDS=${1:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for r in $(seq "$ROUNDS"); do
  for arm in with without; do
    extra=()
    if [[ $arm == without ]]; then extra=(--trainer.callbacks '[]'); fi
    mkdir -p "$work/$arm$r"
    t0=$(date +%s.%N)
    (cd "$work/$arm$r" && /usr/bin/time -f "%U %S" -o time.txt "$CLI" fit \
      --config "$OLDPWD/configs/default.yaml" --trainer.enable_progress_bar false \
      "${extra[@]}" >log.txt 2>&1)
    wall=$(echo "$(date +%s.%N) - $t0" | bc)
    read -r user sys <"$work/$arm$r/time.txt"
    printf '%s round %s wall_s %.1f cpu_s %.1f\n' "$arm" "$r" "$wall" "$(echo "$user + $sys" | bc)"
  done
done
