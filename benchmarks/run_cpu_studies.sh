#!/usr/bin/env bash
# CPU-scale versions of the five studies of docs/experiments.md on the real CIFAR-10 JPEGs
# (configs/experiments/cpu/*.yaml: two built-in small CNNs, AdamW, 6 epochs). The numbers
# they gave are in docs/results.md. About 30 minutes on 2 shared CPU cores.
#
#   mkdir -p data && tar -xzf ../shared/data/cifar10-jpg.tar.gz -C data   # once
#   bash benchmarks/run_cpu_studies.sh            # all studies
#   bash benchmarks/run_cpu_studies.sh split_factor methods spectral_norm report   # a subset
#   bash benchmarks/run_cpu_studies.sh split_factor_steps report_steps   # study (a), equal steps
#   bash benchmarks/run_cpu_studies.sh overfit report_overfit   # study (b)'s gap, overfit models
#   bash benchmarks/run_cpu_studies.sh spectral_norm_nobn report_nobn   # study (d) without BN
#   OMP_NUM_THREADS=2 bash benchmarks/run_cpu_studies.sh resnet18_split_factor \
#     resnet18_methods resnet18_spectral_norm report_resnet18   # ResNet-18, CPU-sized (2 h)
#   bash benchmarks/run_cpu_studies.sh superpixel_mass report_superpixel_mass   # needs methods, resnet18_split_factor
#   bash benchmarks/run_cpu_studies.sh split_factor_steps_chance methods_chance \
#     spectral_norm_chance resnet18_split_factor_chance   # finished runs again, for the
#     # agreement chance levels (validate; move an existing runs/cpu/<name>_chance aside)
#
# OMP_NUM_THREADS=1: on a 2-core machine shared with other jobs, torch's default of one
# intra-op thread per core made a small-CNN training step about 8x slower (oversubscription)
# than a single thread. Every fit's wall time is appended to runs/cpu/timings.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
CLI=${CLI:-lightning-saliency}
CFG=configs/experiments/cpu
mkdir -p runs/cpu
# the ResNet-18 steps: the GPU configs on the CPU (a bf16-mixed step of 2 x 128 images took
# 1.3 s with 2 threads here, against 3.4 s in fp32)
R18=(--trainer.accelerator cpu --trainer.precision bf16-mixed --trainer.enable_model_summary false
  --data.init_args.num_workers 1 --trainer.logger.init_args.save_dir runs/cpu)
SG16="method: smooth_grad, noise_level: 0.2, samples: 16"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(split_factor methods spectral_norm report)

timed() { # timed SUBCOMMAND NAME ARGS...: one timed CLI run (fit, validate, ...)
  local sub=$1 name=$2; shift 2
  local t0=$SECONDS
  nice -n 10 "$CLI" "$sub" --trainer.enable_progress_bar false "$@"
  echo "$name $((SECONDS - t0))s" | tee -a runs/cpu/timings.txt
}
fit() { timed fit "$@"; } # fit NAME ARGS...: one timed training run
revalidate() { # revalidate RUN_DIR: a finished run's last checkpoint evaluated again
  # (validate) with the run's own saved config, so the same model, split and probes, into
  # runs/cpu/<study>_chance/<version>; maps and forward passes in fp32
  local dir=$1 study version ck
  study=$(basename "$(dirname "$dir")"); version=$(basename "$dir")
  ck=$(ls "$dir"/checkpoints/*.ckpt | tail -1)
  timed validate "${study}_chance/$version" --config "$dir/config.yaml" --ckpt_path "$ck" \
    --trainer.precision 32-true --trainer.logger.init_args.save_dir runs/cpu \
    --trainer.logger.init_args.name "${study}_chance" --trainer.logger.init_args.version "$version"
}

for step in "${STEPS[@]}"; do
  case $step in
    split_factor) # study (a); sf2 is also the unnormalized baseline of study (d)
      for sf in 2 4 8 16; do
        fit split_factor/sf$sf --config $CFG/split_factor.yaml \
          --data.init_args.split_factor $sf --trainer.logger.init_args.version sf$sf
      done ;;
    split_factor_steps) # study (a) with the same number of optimizer steps (about 3,900) for
      # every split factor: max_epochs grows with sf, monitored at 25/50/75/100% of training
      for sf in 2 4 8 16; do
        e=$((10 * sf)); q=$((e / 4))
        fit split_factor_steps/sf$sf --config $CFG/split_factor.yaml \
          --data.init_args.split_factor $sf --trainer.max_epochs $e \
          --trainer.check_val_every_n_epoch $q --trainer.callbacks.init_args.every_n_epochs $q \
          --trainer.logger.init_args.name split_factor_steps --trainer.logger.init_args.version sf$sf
      done ;;
    overfit) # study (b)'s gap claim needs models that overfit: split factor 16 without
      # augmentation, 160 epochs (about 4,000 steps), SmoothGrad sigma sweep with 20 draws
      fit overfit/sf16 --config $CFG/split_factor.yaml --data.init_args.split_factor 16 \
        --data.init_args.augment false --trainer.max_epochs 160 \
        --trainer.check_val_every_n_epoch 40 --trainer.callbacks.init_args.every_n_epochs 40 \
        --trainer.callbacks.init_args.methods "[simple_grad, $(printf '{method: smooth_grad, sigma: %s, samples: 20}, ' 0.1 0.2 0.5 1.0 | sed 's/, $//')]" \
        --trainer.logger.init_args.name overfit --trainer.logger.init_args.version sf16 ;;
    spectral_norm_nobn) # study (d) without BatchNorm, which otherwise undoes the convs'
      # normalization: unnormalized baseline and c = 4, 2, 1, 0.5, 6 epochs each
      for c in none 4 2 1 0.5; do
        sn=(); [ $c != none ] && sn=(--model.spectral_norm_factor $c)
        fit spectral_norm_nobn/c$c --config $CFG/spectral_norm.yaml "${sn[@]}" \
          --model.backbone_kwargs '{batch_norm: false}' \
          --trainer.logger.init_args.name spectral_norm_nobn --trainer.logger.init_args.version c$c
      done ;;
    resnet18_split_factor) # study (a) with the GPU configs' ResNet-18 (CIFAR stem), scaled
      # to a CPU: bf16-mixed training, the same number of optimizer steps for every sf
      # (1.5 x sf epochs, about 585 per model), monitored once, at the last epoch; SFS
      # picks split factors
      for sf in ${SFS:-2 4 8 16}; do
        e=$((3 * sf / 2))
        fit resnet18_split_factor/sf$sf --config configs/experiments/split_factor.yaml \
          "${R18[@]}" --data.init_args.split_factor $sf --trainer.max_epochs $e \
          --trainer.check_val_every_n_epoch $e --trainer.callbacks.init_args.every_n_epochs $e \
          --trainer.logger.init_args.name resnet18_split_factor --trainer.logger.init_args.version sf$sf
      done ;;
    resnet18_spectral_norm) # study (d) with ResNet-18, as above at sf 2 (3 epochs); the
      # unnormalized baseline is resnet18_split_factor/sf2
      for c in 0.5 1 4; do
        fit resnet18_spectral_norm/c$c --config configs/experiments/spectral_norm.yaml \
          "${R18[@]}" --model.spectral_norm_factor $c --trainer.max_epochs 3 \
          --trainer.check_val_every_n_epoch 3 --trainer.callbacks.init_args.every_n_epochs 3 \
          --trainer.logger.init_args.name resnet18_spectral_norm --trainer.logger.init_args.version c$c
      done ;;
    resnet18_methods) # studies (b), (c), (e) on the trained resnet18_split_factor/sf2 models:
      # their last checkpoint evaluated (validate) with a CPU-sized subset of methods.yaml
      # (no SmoothGrad/AdaptGrad over IG, which cost 256 passes per probe; sigma x 1 or 20
      # draws); report it with --stage validate
      ck=$(ls runs/cpu/resnet18_split_factor/sf2/checkpoints/*.ckpt | tail -1)
      sg=$(for s in 0.1 0.2 0.5 1.0 2.0 5.0; do for n in 1 20; do
        printf '{method: smooth_grad, sigma: %s, samples: %s}, ' $s $n; done; done)
      sp=$(for a in slic quickshift felzenszwalb watershed; do printf '{method: simple_grad, superpixel: %s}, {%s, superpixel: %s}, ' $a "$SG16" $a; done)
      timed validate resnet18_methods/sf2 --config configs/experiments/methods.yaml "${R18[@]}" \
        --trainer.precision 32-true --ckpt_path "$ck" \
        --trainer.callbacks.init_args.methods "[simple_grad, $sg {$SG16}, $sp
          {method: adapt_grad, confidence: 0.95, samples: 16}, grad_x_input,
          {$SG16, base: grad_x_input}, {method: adapt_grad, confidence: 0.95, samples: 16, base: grad_x_input},
          {method: integrated_gradients, steps: 16, baseline: min},
          {method: integrated_gradients, steps: 16, baseline: max}]" \
        --trainer.logger.init_args.name resnet18_methods --trainer.logger.init_args.version sf2 ;;
    resnet18_split_factor_chance|split_factor_steps_chance) # study (a) and (a'), for the
      # agreement chance levels logged since the fits
      for sf in ${SFS:-2 4 8 16}; do revalidate runs/cpu/${step%_chance}/sf$sf; done ;;
    spectral_norm_chance) # study (d) and (d') with the small CNN's unnormalized baseline
      # split_factor/sf2 (ResNet-18's is resnet18_split_factor_chance/sf2); runs without a
      # saved config are skipped
      for dir in runs/cpu/split_factor/sf2 runs/cpu/spectral_norm/c* runs/cpu/spectral_norm_nobn/c* \
          runs/cpu/resnet18_spectral_norm/c*; do
        if [ -f $dir/config.yaml ]; then revalidate $dir; fi
      done ;;
    methods_chance) # studies (b), (c), (e) of the small CNN
      revalidate runs/cpu/methods/sf2 ;;
    superpixel_mass) # study (c) with signed and magnitude (abs_sum) super-pixel grouping,
      # on the trained sf-2 models of the small CNN (methods/sf2) and of ResNet-18
      # (resnet18_split_factor/sf2), their last checkpoints evaluated (validate), maps in fp32;
      # report each with --stage validate
      sp=$(for a in slic quickshift felzenszwalb watershed; do for r in sum abs_sum; do
        printf '{method: simple_grad, superpixel: {algorithm: %s, reduction: %s}}, ' $a $r
        printf '{%s, superpixel: {algorithm: %s, reduction: %s}}, ' "$SG16" $a $r; done; done)
      ms="[simple_grad, {$SG16}, ${sp%, }]"
      ck=$(ls runs/cpu/methods/sf2/checkpoints/*.ckpt | tail -1)
      timed validate superpixel_mass/small_cnn --config $CFG/methods.yaml --ckpt_path "$ck" \
        --trainer.callbacks.init_args.methods "$ms" \
        --trainer.logger.init_args.name superpixel_mass --trainer.logger.init_args.version small_cnn
      ck=$(ls runs/cpu/resnet18_split_factor/sf2/checkpoints/*.ckpt | tail -1)
      timed validate superpixel_mass/resnet18 --config configs/experiments/methods.yaml \
        "${R18[@]}" --trainer.precision 32-true --ckpt_path "$ck" \
        --trainer.callbacks.init_args.methods "$ms" \
        --trainer.logger.init_args.name superpixel_mass --trainer.logger.init_args.version resnet18 ;;
    methods) # studies (b), (c), (e): one split-factor-2 run with all their methods
      fit methods/sf2 --config $CFG/methods.yaml --trainer.logger.init_args.version sf2 ;;
    spectral_norm) # study (d)
      for c in 1 2 4 0.5; do
        fit spectral_norm/c$c --config $CFG/spectral_norm.yaml \
          --model.spectral_norm_factor $c --trainer.logger.init_args.version c$c
      done ;;
    report)
      "$CLI" report runs/cpu/split_factor --out reports/cpu/split_factor
      "$CLI" report runs/cpu/methods --out reports/cpu/methods
      "$CLI" report runs/cpu/spectral_norm runs/cpu/split_factor/sf2 \
        --out reports/cpu/spectral_norm ;;
    report_steps)
      "$CLI" report runs/cpu/split_factor_steps --out reports/cpu/split_factor_steps ;;
    report_overfit)
      "$CLI" report runs/cpu/overfit --out reports/cpu/overfit ;;
    report_resnet18)
      "$CLI" report runs/cpu/resnet18_split_factor --out reports/cpu/resnet18_split_factor
      if [ -d runs/cpu/resnet18_spectral_norm ]; then
        "$CLI" report runs/cpu/resnet18_spectral_norm runs/cpu/resnet18_split_factor/sf2 \
          --out reports/cpu/resnet18_spectral_norm
      fi
      if [ -d runs/cpu/resnet18_methods ]; then
        "$CLI" report runs/cpu/resnet18_methods --stage validate --out reports/cpu/resnet18_methods
      fi ;;
    report_nobn)
      "$CLI" report runs/cpu/spectral_norm_nobn --out reports/cpu/spectral_norm_nobn ;;
    report_superpixel_mass)
      for v in small_cnn resnet18; do
        "$CLI" report runs/cpu/superpixel_mass/$v --stage validate \
          --out reports/cpu/superpixel_mass/$v
      done ;;
    *) echo "unknown step $step (split_factor, split_factor_steps, overfit, methods," \
         "spectral_norm, spectral_norm_nobn, resnet18_split_factor, resnet18_methods," \
         "resnet18_spectral_norm, resnet18_split_factor_chance, split_factor_steps_chance," \
         "methods_chance, spectral_norm_chance," \
         "superpixel_mass, report," \
         "report_steps, report_overfit," \
         "report_nobn, report_resnet18, report_superpixel_mass)" >&2; exit 2 ;;
  esac
done
