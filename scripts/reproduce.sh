#!/usr/bin/env bash
# Reproduce the README's "Reproduced results": every experiment preset with norm=none, custom and builtin
# on the local MNIST test set (8,000 train / 2,000 validation, split seed 0), then one `bnexp report` per
# preset; the key figures are copied into scripts/figures/.
#
#   bash scripts/reproduce.sh                     # all presets (about 20 minutes on 2 busy CPU cores)
#   bash scripts/reproduce.sh mlp_mnist           # only some presets
#   REPORT_ONLY=1 bash scripts/reproduce.sh       # redraw the reports and figures from existing runs
#
# Environment: OUT (default outputs/reproduce), DATA (default ../shared/data/mnist-t10k),
# BN_PAPER_STEPS (default 20000; the paper trains 50,000 steps: BN_PAPER_STEPS=50000).
# Fashion-MNIST cannot be downloaded here, so lenet_fashion runs on the same MNIST data.
set -uo pipefail
cd "$(dirname "$0")/.."
BNEXP=${BNEXP:-.venv/bin/bnexp}
DATA=${DATA:-../shared/data/mnist-t10k}
OUT=${OUT:-outputs/reproduce}
BN_PAPER_STEPS=${BN_PAPER_STEPS:-20000}
FIGURES=scripts/figures
# threads=1: on a shared or small machine torch's default thread count is often much slower.
COMMON=(dataset=idx "dataset.path=$DATA" dataset.val_fraction=0.2 dataset.split_seed=0 seed=0 threads=1)

if [ ! -d "$DATA" ]; then
  echo "error: $DATA not found (the MNIST test set in IDX format; set DATA=DIR)" >&2
  exit 2
fi

presets=("$@")
[ ${#presets[@]} -eq 0 ] && presets=(mlp_mnist convnet_mnist lenet_fashion simplenet_mnist bn_paper_mnist)

for preset in "${presets[@]}"; do
  extra=()
  [ "$preset" = bn_paper_mnist ] && extra=("max_steps=$BN_PAPER_STEPS")
  [ "${REPORT_ONLY:-0}" = 1 ] || rm -rf "${OUT:?}/$preset"
  for norm in none custom builtin; do
    [ "${REPORT_ONLY:-0}" = 1 ] && break
    echo "== $preset norm=$norm"
    # a diverged run (exit 3) is kept and reported; carry on with the others
    "$BNEXP" train -q "experiment=$preset" "norm=$norm" "${COMMON[@]}" "${extra[@]}" "output_dir=$OUT/$preset" \
      || echo "   (bnexp train exited $?)"
  done
  title="$preset: norm none / custom / builtin on the MNIST test set (8,000 train / 2,000 validation)"
  [ "$preset" = lenet_fashion ] && title="$title, not Fashion-MNIST (not available offline)"
  "$BNEXP" report "$OUT/$preset" --title "$title"
  mkdir -p "$FIGURES"
  cp "$OUT/$preset/report/curves.png" "$FIGURES/${preset}_curves.png"
  case "$preset" in
    bn_paper_mnist|lenet_fashion)
      cp "$OUT/$preset/report/activations.png" "$FIGURES/${preset}_activations.png"
      cp "$OUT/$preset/report/norm_params.png" "$FIGURES/${preset}_norm_params.png" ;;
  esac
done
echo "reports: $OUT/<preset>/report/report.md; figures: $FIGURES/"
