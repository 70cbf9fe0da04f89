#!/usr/bin/env bash
# Reproduce the README's "Reproduced results" and docs/bn-science.md: every experiment preset with
# norm=none, custom and builtin and 3 seeds each (one sweep per preset, 2 jobs at once), on the local
# MNIST test set (8,000 train / 2,000 validation, split seed 0); then the batch-size study (plain and
# ghost batch norm); then one `bnexp report` per preset and study. The key figures are copied into
# scripts/figures/.
#
#   bash scripts/reproduce.sh                          # everything (about 50 minutes on 2 busy CPU cores)
#   bash scripts/reproduce.sh mlp_mnist batch_size_study   # only some presets
#   REPORT_ONLY=1 bash scripts/reproduce.sh            # redraw the reports and figures from existing runs
#
# Environment: OUT (default outputs/reproduce), DATA (default ../shared/data/mnist-t10k),
# SEEDS (default 0,1,2), JOBS (default 2), BN_PAPER_STEPS (default 10000; the paper trains 50,000 steps:
# BN_PAPER_STEPS=50000). Compute is budgeted for 2 cores: the presets keep their own epochs, except
# bn_paper_mnist (10,000 of the paper's 50,000 steps) and simplenet_mnist (10 of its 20 epochs).
# Fashion-MNIST cannot be downloaded here, so lenet_fashion runs on the same MNIST data.
set -uo pipefail
cd "$(dirname "$0")/.."
BNEXP=${BNEXP:-.venv/bin/bnexp}
DATA=${DATA:-../shared/data/mnist-t10k}
OUT=${OUT:-outputs/reproduce}
SEEDS=${SEEDS:-0,1,2}
JOBS=${JOBS:-2}
BN_PAPER_STEPS=${BN_PAPER_STEPS:-10000}
FIGURES=scripts/figures
# threads=1: with 2 jobs at once on a small or shared machine, more threads per job only wait on each other.
COMMON=(dataset=idx "dataset.path=$DATA" dataset.val_fraction=0.2 dataset.split_seed=0 threads=1 "seed=$SEEDS")

if [ ! -d "$DATA" ]; then
  echo "error: $DATA not found (the MNIST test set in IDX format; set DATA=DIR)" >&2
  exit 2
fi

sweep() {  # sweep DIR OVERRIDES...: one sweep into DIR; a failed or diverged job is kept and reported
  local dir=$1
  shift
  "$BNEXP" sweep -j "$JOBS" "$@" "${COMMON[@]}" "output_dir=$dir" || echo "   (bnexp sweep exited $?)"
}

presets=("$@")
[ ${#presets[@]} -eq 0 ] && presets=(mlp_mnist convnet_mnist lenet_fashion simplenet_mnist bn_paper_mnist batch_size_study)

mkdir -p "$FIGURES"
for preset in "${presets[@]}"; do
  if [ "${REPORT_ONLY:-0}" != 1 ]; then
    rm -rf "${OUT:?}/$preset"
    echo "== $preset (seeds $SEEDS)"
    case "$preset" in
      batch_size_study)  # plain BN and no BN at three batch sizes, then ghost batches of 16 inside the larger ones
        sweep "$OUT/$preset" "experiment=$preset" norm=none,custom,builtin batch_size=16,64,256
        sweep "$OUT/$preset" "experiment=$preset" norm=custom,builtin batch_size=64,256 norm.ghost_batch_size=16 ;;
      bn_paper_mnist) sweep "$OUT/$preset" "experiment=$preset" norm=none,custom,builtin "max_steps=$BN_PAPER_STEPS" ;;
      simplenet_mnist) sweep "$OUT/$preset" "experiment=$preset" norm=none,custom,builtin epochs=10 ;;
      *) sweep "$OUT/$preset" "experiment=$preset" norm=none,custom,builtin ;;
    esac
  fi
  title="$preset: norm none / custom / builtin, seeds $SEEDS, on the MNIST test set (8,000 train / 2,000 validation)"
  [ "$preset" = lenet_fashion ] && title="$title, not Fashion-MNIST (not available offline)"
  "$BNEXP" report "$OUT/$preset" --title "$title" || continue
  report="$OUT/$preset/report"
  cp "$report/curves.png" "$FIGURES/${preset}_curves.png"
  [ -f "$report/bn_gap.png" ] && cp "$report/bn_gap.png" "$FIGURES/${preset}_bn_gap.png"
  case "$preset" in
    bn_paper_mnist|lenet_fashion)
      cp "$report/activations.png" "$FIGURES/${preset}_activations.png"
      cp "$report/norm_params.png" "$FIGURES/${preset}_norm_params.png"
      cp "$report/gradients.png" "$FIGURES/${preset}_gradients.png" ;;
    batch_size_study) cp "$report/batch_size.png" "$FIGURES/batch_size_study.png" ;;
  esac
done
echo "reports: $OUT/<preset>/report/report.md; figures: $FIGURES/"
