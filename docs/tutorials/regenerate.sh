#!/usr/bin/env bash
# Regenerates the committed outputs of the tutorials (docs/tutorials/outputs/*.txt) and their
# figures (docs/assets/tutorials/*.png) by running each example with its default settings.
# The examples take from ~20 s to ~5 minutes each on 2 CPU cores (their docstrings say how
# long), so the docs build does not run them: run this after changing an example.
#   bash docs/tutorials/regenerate.sh                 # all of them
#   bash docs/tutorials/regenerate.sh quickstart      # one
set -uo pipefail
cd "$(dirname "$0")/../.."
export MPLBACKEND=Agg
out=docs/tutorials/outputs
fig=docs/assets/tutorials
mkdir -p "$out" "$fig"
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(quickstart custom_objective hierarchical_vi discrete_latents ebm_short_run
         langevin_zoo coopflow vae_digits latent_flow_digits score_posterior)
fi
for name in "${names[@]}"; do
  echo "== $name" >&2
  extra=()
  case "$name" in
    vae_digits|latent_flow_digits) extra=(--no-progress) ;;
  esac
  start=$(date +%s)
  python "examples/$name.py" --out "$fig/$name.png" "${extra[@]}" > "$out/$name.txt" 2>&1
  rc=$?
  echo "[exit $rc after $(( $(date +%s) - start )) s wall, $(nproc) CPU cores]" >> "$out/$name.txt"
  # absolute paths of this checkout would leak into the page: keep them relative
  # progress bars redraw with carriage returns: keep what each line shows last
  sed -i -e "s#$(pwd)/##g" -e "s/.*\r//" "$out/$name.txt"
done
