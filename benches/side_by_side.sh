#!/usr/bin/env bash
# photoq's image pipeline next to sharp, libvips and ImageMagick on the same files, in one
# run: images/s and peak RSS (medians of RUNS runs, 2 images at a time everywhere), then
# the ratios, then output quality against a full-resolution Lanczos reference (DSSIM).
#
#   benches/side_by_side.sh [SET_DIR...]     default: the 12 MP and 24 MP sets
#
# The job is the one of ../shared/bench/thumb.sh: decode, EXIF auto-rotate, 256 px and
# 1280 px long-edge JPEG q80, metadata stripped. photoq runs it as `photoq render
# --concurrency 2` with its default variants (thumbnail 256, preview 1280, q80).
#
# Needs (Debian): libvips-tools imagemagick libimage-exiftool-perl time, node with sharp in
# $SHARP_NODE_MODULES (default /tmp/perf/node/node_modules), and the sets built by
# ../shared/bench/make-big-corpus.sh. `dssim` is installed with cargo if missing.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/bench}
RUNS=${RUNS:-5}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SETS=("$@")
[ ${#SETS[@]} -gt 0 ] || SETS=(/tmp/corpus/big/12mp /tmp/corpus/big/24mp-x4)
# Peer variants run, besides photoq. sharp-cascade is the strongest.
PEER_VARIANTS=(${PEER_VARIANTS:-sharp-cascade sharp-two vips-cascade-p2 im-hint-p2})

. "$HERE/tools.sh"
require vipsthumbnail node /usr/bin/time /usr/bin/convert
ensure_dssim
build_photoq "$ROOT"

# run NAME OUT_DIR CMD... -> prints "seconds max_rss_kib" of one run
run_once() {
  local out=$1; shift
  rm -rf "$out"; mkdir -p "$out"
  /usr/bin/time -f '%e %M' -o "$WORK/time" "$@" >/dev/null 2>"$WORK/stderr" || {
    cat "$WORK/stderr" >&2; return 1; }
  cat "$WORK/time"
}

# command for a tool over a set, writing NAME_256.jpg / NAME_1280.jpg (photoq: renamed after)
tool_cmd() {
  local tool=$1 set=$2 out=$3
  case $tool in
    photoq) echo "$PHOTOQ render --concurrency 2 --out $out $set/*.jpg" ;;
    *) echo "bash $PEERS/thumb.sh $tool $set $out" ;;
  esac
}

declare -A IPS RSS
RESULTS=$WORK/results.txt
for set in "${SETS[@]}"; do
  n=$(ls "$set"/*.jpg | wc -l)
  name=$(basename "$set")
  for tool in photoq "${PEER_VARIANTS[@]}"; do
    out=$WORK/out/$name/$tool
    cmd=$(tool_cmd "$tool" "$set" "$out")
    say "$name: $tool ($RUNS runs)"
    run_once "$out" $cmd >/dev/null # warm-up
    : >"$WORK/runs"
    for ((i = 0; i < RUNS; i++)); do run_once "$out" $cmd >>"$WORK/runs"; done
    secs=$(cut -d' ' -f1 "$WORK/runs" | median)
    kib=$(cut -d' ' -f2 "$WORK/runs" | median)
    IPS[$name/$tool]=$(awk -v n="$n" -v s="$secs" 'BEGIN {printf "%.2f", n / s}')
    RSS[$name/$tool]=$(awk -v k="$kib" 'BEGIN {printf "%.0f", k / 1024}')
    if [ "$tool" = photoq ]; then
      for f in "$out"/*_thumbnail.jpg; do mv "$f" "${f%_thumbnail.jpg}_256.jpg"; done
      for f in "$out"/*_preview.jpg; do mv "$f" "${f%_preview.jpg}_1280.jpg"; done
    fi
  done
done

# Quality: DSSIM (0 = identical; lower is better) of each output against ImageMagick's
# full-resolution decode, auto-orient and Lanczos resize to the same size, stored as PNG.
quality() { # set_name set_dir tool -> mean dssim over every output
  local name=$1 set=$2 tool=$3 sum=0 count=0 f size src ref
  for f in "$WORK/out/$name/$tool"/*.jpg; do
    size=$(identify -format '%wx%h' "$f")
    src=$set/$(basename "$f" | sed -E 's/_(256|1280)\.jpg$/.jpg/')
    ref=$WORK/ref/$name/$(basename "$f" .jpg)_$size.png
    if [ ! -f "$ref" ]; then
      mkdir -p "$(dirname "$ref")"
      /usr/bin/convert "$src" -auto-orient -filter Lanczos -resize "${size}!" -strip "$ref"
    fi
    sum=$(awk -v a="$sum" -v b="$("$DSSIM" "$ref" "$f" | cut -f1)" 'BEGIN {printf "%.8f", a + b}')
    count=$((count + 1))
  done
  awk -v s="$sum" -v c="$count" 'BEGIN {printf "%.6f", s / c}'
}

printf '\n%-10s %-16s %10s %10s %12s %12s\n' set tool images/s "peak MiB" "DSSIM" "photoq is" >"$RESULTS"
for set in "${SETS[@]}"; do
  name=$(basename "$set")
  say "$name: quality"
  for tool in photoq "${PEER_VARIANTS[@]}"; do
    q=$(quality "$name" "$set" "$tool")
    ratio=$(awk -v a="${IPS[$name/photoq]}" -v b="${IPS[$name/$tool]}" 'BEGIN {printf "%.2fx", a / b}')
    printf '%-10s %-16s %10s %10s %12s %12s\n' "$name" "$tool" "${IPS[$name/$tool]}" \
      "${RSS[$name/$tool]}" "$q" "$ratio" >>"$RESULTS"
  done
done
cat "$RESULTS"
echo
echo "images/s: files / median wall time of $RUNS runs (process start-up included for every tool);"
echo "peak MiB: median of the largest process's maximum RSS; DSSIM: mean over both sizes of"
echo "every image against a full-resolution Lanczos reference; 'photoq is': photoq's images/s"
echo "divided by the tool's. $(nproc) cores, $(uname -m)."
