#!/usr/bin/env bash
# The ingest's CPU per image, this checkout against an earlier revision, interleaved.
#
#     bench/ab_ingest.sh BASE_REV [ROUNDS] [bench/ingest.py options...]
#
# Checks BASE_REV out into a throw-away git worktree and runs bench/ingest.py (one round each)
# alternately from that worktree and from this checkout, ROUNDS times (default 3), with the same
# venv, data and manifest (default: the 62-source manifest, 1 and 2 inference threads). Each
# run starts its own throw-away stack. Take the median of each column over the rounds: the
# machine's load moves, the alternation keeps it fair to both sides.
set -euo pipefail
base=${1:?usage: bench/ab_ingest.sh BASE_REV [ROUNDS] [bench/ingest.py options...]}
rounds=${2:-3}
shift $(( $# >= 2 ? 2 : 1 ))
here=$(git rev-parse --show-toplevel)
data=${ARTCLF_BENCH_DATA:-$here/../shared/data/artworks}
tree=$(mktemp -d -t artclf-ab-XXXXXX)
trap 'git -C "$here" worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"' EXIT
git -C "$here" worktree add --detach -q "$tree" "$base"
options=(--manifest "$here/bench/manifests/ingest-sources-1000.tsv" --threads 1,2
         --baseline-sample 0 --data "$data" "$@")
for ((r = 1; r <= rounds; r++)); do
  for side in base head; do
    root=$([ "$side" = base ] && echo "$tree" || echo "$here")
    echo "=== round $r: $side ($(git -C "$root" rev-parse --short HEAD)), $(date -u +%T)," \
         "load $(cut -d' ' -f1 /proc/loadavg)"
    "$here/.venv/bin/python" "$root/bench/ingest.py" --rounds 1 "${options[@]}"
  done
done
