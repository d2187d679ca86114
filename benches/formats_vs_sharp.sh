#!/usr/bin/env bash
# photoq next to sharp (and Debian's libvips where sharp cannot) on the photos phones send,
# in one run: images/s, peak RSS and quality (DSSIM) of three jobs over the 12 MP set.
#
#   benches/formats_vs_sharp.sh [SET_DIR]      default: /tmp/corpus/big/12mp
#
# Sets, made from SET_DIR's JPEGs (4000 × 3000, EXIF kept) into a cache directory:
#   p3    the same JPEGs with a Display P3 profile attached (exiftool; pixels untouched):
#         phone photos whose colours need converting to sRGB
#   heic  those as HEIC (heif-enc -q 80, x265 preset fast, HEVC 4:2:0, the profile kept)
# Jobs (each image decoded once, turned upright, to sRGB from its profile, 1280 px and
# 256 px long edge, metadata stripped, 2 images at a time everywhere):
#   p3 → JPEG q80     photoq render (default variants) | sharp
#   heic → JPEG q80   photoq render | Debian's vipsthumbnail (libheif 1.15; sharp's
#                     prebuilt binaries read no HEIC, which the run shows)
#   p3 → AVIF         photoq render (variants in AVIF, quality $OUR_AVIF_QUALITY, libaom
#                     speed $OUR_AVIF_SPEED, chroma $OUR_AVIF_CHROMA) | sharp (avif quality
#                     $SHARP_AVIF_QUALITY, effort 4, 4:4:4: its defaults)
# DSSIM (lower is better): every output against a reference made from its source at full
# resolution (libvips: to sRGB, upright) resized by ImageMagick's Lanczos to the same size.
# (heif-enc keeps a JPEG's EXIF orientation as metadata only, which HEIF readers ignore:
# the HEIC references are made from the HEIC files.) JOBS="p3-avif ..." runs some jobs only.
#
# Needs (Debian): libvips-tools imagemagick libimage-exiftool-perl libheif-examples
# libavif-bin time; node with sharp in $SHARP_NODE_MODULES (default /tmp/perf/node/node_modules);
# the 12 MP set from ../shared/bench/make-big-corpus.sh. `dssim` is installed with cargo if
# missing.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RUNS=${RUNS:-3}
SET=${1:-/tmp/corpus/big/12mp}
CACHE=${PHOTOQ_CACHE_DIR:-$HOME/.cache/photoq}/bench-formats
OUR_AVIF_QUALITY=${OUR_AVIF_QUALITY:-50}
OUR_AVIF_SPEED=${OUR_AVIF_SPEED:-5}
OUR_AVIF_CHROMA=${OUR_AVIF_CHROMA:-4:4:4}
SHARP_AVIF_QUALITY=${SHARP_AVIF_QUALITY:-50}
export NODE_PATH=${SHARP_NODE_MODULES:-/tmp/perf/node/node_modules}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

. "$HERE/tools.sh"
require vips vipsthumbnail node exiftool heif-enc avifdec /usr/bin/time /usr/bin/convert
ensure_dssim
build_photoq "$ROOT"

# The sets, once.
P3=$CACHE/p3 HEIC=$CACHE/heic UPRIGHT=$CACHE/upright UPRIGHT_HEIC=$CACHE/upright-heic
mkdir -p "$P3" "$HEIC" "$UPRIGHT" "$UPRIGHT_HEIC"
/usr/bin/convert "$ROOT/tests/images/chart-p3.png" "$WORK/p3.icc"
for f in "$SET"/*.jpg; do
  name=$(basename "$f" .jpg)
  if [ ! -f "$P3/$name.jpg" ]; then
    exiftool -q -q "-ICC_Profile<=$WORK/p3.icc" -o "$P3/$name.jpg" "$f"
  fi
  if [ ! -f "$HEIC/$name.heic" ]; then
    say "encoding $name.heic"
    heif-enc -q 80 -p preset=fast -o "$HEIC/$name.heic" "$P3/$name.jpg" >/dev/null
  fi
  if [ ! -f "$UPRIGHT/$name.png" ]; then
    vips icc_transform "$P3/$name.jpg" "$WORK/srgb.v" srgb --embedded
    vips autorot "$WORK/srgb.v" "$UPRIGHT/$name.png"
  fi
  if [ ! -f "$UPRIGHT_HEIC/$name.png" ]; then
    vips icc_transform "$HEIC/$name.heic" "$UPRIGHT_HEIC/$name.png" srgb --embedded
  fi
done
n=$(ls "$P3"/*.jpg | wc -l)

# Configurations of photoq: AVIF variants at the chosen quality, speed and chroma.
cat >"$WORK/avif.toml" <<EOF
[pipeline]
avif_speed = $OUR_AVIF_SPEED
avif_chroma = "$OUR_AVIF_CHROMA"
[variants.thumbnail]
format = "avif"
quality = $OUR_AVIF_QUALITY
[variants.preview]
format = "avif"
quality = $OUR_AVIF_QUALITY
EOF

# measure JOB TOOL OUT CMD... -> IPS[JOB/TOOL], RSS[JOB/TOOL] (medians of RUNS after a warm-up)
declare -A IPS RSS
measure() {
  local key=$1/$2 out=$3; shift 3
  say "$key ($RUNS runs)"
  : >"$WORK/runs"
  for ((i = 0; i <= RUNS; i++)); do
    rm -rf "$out"; mkdir -p "$out"
    if ! /usr/bin/time -f '%e %M' -o "$WORK/time" "$@" >/dev/null 2>"$WORK/stderr"; then
      say "$key failed: $(tail -n 1 "$WORK/stderr")"
      IPS[$key]=unsupported RSS[$key]=-
      return 0
    fi
    [ "$i" -eq 0 ] || cat "$WORK/time" >>"$WORK/runs"
  done
  IPS[$key]=$(awk -v n="$n" -v s="$(cut -d' ' -f1 "$WORK/runs" | median)" 'BEGIN {printf "%.2f", n / s}')
  RSS[$key]=$(awk -v k="$(cut -d' ' -f2 "$WORK/runs" | median)" 'BEGIN {printf "%.0f", k / 1024}')
}

# photoq writes NAME_thumbnail.EXT and NAME_preview.EXT; the others NAME_256 / NAME_1280.
photoq_names() {
  local f
  for f in "$1"/*_thumbnail.*; do mv "$f" "${f/_thumbnail./_256.}"; done
  for f in "$1"/*_preview.*; do mv "$f" "${f/_preview./_1280.}"; done
}

# quality DIR -> mean DSSIM of every output against the reference of its size; KiB a file
declare -A DSSIM_OF KIB
quality() {
  local key=$1 dir=$2 sum=0 count=0 f png size name ref upright=$UPRIGHT
  [[ $key != heic-* ]] || upright=$UPRIGHT_HEIC
  [ "${IPS[$key]}" != unsupported ] || { DSSIM_OF[$key]=-; KIB[$key]=-; return 0; }
  for f in "$dir"/*; do
    png=$f
    if [[ $f == *.avif ]]; then png=$WORK/decoded.png; avifdec "$f" "$png" >/dev/null; fi
    size=$(identify -format '%wx%h' "$png")
    name=$(basename "$f"); name=${name%_*}
    ref=$WORK/ref/$(basename "$upright")/${name}_$size.png
    if [ ! -f "$ref" ]; then
      mkdir -p "$(dirname "$ref")"
      /usr/bin/convert "$upright/$name.png" -filter Lanczos -resize "${size}!" "$ref"
    fi
    sum=$(awk -v a="$sum" -v b="$("$DSSIM" "$ref" "$png" | cut -f1)" 'BEGIN {printf "%.8f", a + b}')
    count=$((count + 1))
  done
  DSSIM_OF[$key]=$(awk -v s="$sum" -v c="$count" 'BEGIN {printf "%.6f", s / c}')
  KIB[$key]=$(du -k -c "$dir"/* | tail -n 1 | awk -v c="$count" '{printf "%.1f", $1 / c}')
}

vips_heic() { # vipsthumbnail over the HEIC set, two processes, both sizes from one decode each
  local out=$1
  printf '%s\0' "$HEIC"/*.heic | VIPS_CONCURRENCY=1 xargs -0 -P2 -n5 \
    vipsthumbnail -s 1280 --export-profile srgb -o "$out/%s_1280.jpg[Q=80,strip]"
  (cd "$out" && for f in *_1280.jpg; do
    vipsthumbnail -s 256 -o "$out/${f%_1280.jpg}_256.jpg[Q=80,strip]" "$f"; done)
}
export -f vips_heic
export HEIC

JOBS=(${JOBS:-p3-jpeg heic-jpeg p3-avif})
declare -A TOOLS=([p3-jpeg]="photoq sharp" [heic-jpeg]="photoq sharp vipsthumbnail" [p3-avif]="photoq sharp")
for job in "${JOBS[@]}"; do
  for tool in ${TOOLS[$job]}; do
    out=$WORK/out/$job/$tool
    case $job/$tool in
      p3-jpeg/photoq) measure "$job" "$tool" "$out" "$PHOTOQ" render --concurrency 2 --out "$out" "$P3"/*.jpg ;;
      p3-jpeg/sharp) measure "$job" "$tool" "$out" node "$HERE/formats_sharp.js" jpeg "$P3" "$out" 2 ;;
      heic-jpeg/photoq) measure "$job" "$tool" "$out" "$PHOTOQ" render --concurrency 2 --out "$out" "$HEIC"/*.heic ;;
      heic-jpeg/sharp) measure "$job" "$tool" "$out" node "$HERE/formats_sharp.js" jpeg "$HEIC" "$out" 2 ;;
      heic-jpeg/vipsthumbnail) measure "$job" "$tool" "$out" bash -c 'vips_heic "$0"' "$out" ;;
      p3-avif/photoq) measure "$job" "$tool" "$out" "$PHOTOQ" --config "$WORK/avif.toml" render --concurrency 2 --out "$out" "$P3"/*.jpg ;;
      p3-avif/sharp) measure "$job" "$tool" "$out" node "$HERE/formats_sharp.js" avif "$P3" "$out" 2 "$SHARP_AVIF_QUALITY" ;;
    esac
    [ "$tool" != photoq ] || photoq_names "$out"
  done
done

say "quality"
printf '\n%-10s %-14s %9s %9s %10s %9s %11s\n' job tool images/s "peak MiB" DSSIM "KiB/file" "photoq is" >"$WORK/results"
for job in "${JOBS[@]}"; do
  for tool in ${TOOLS[$job]}; do
    quality "$job/$tool" "$WORK/out/$job/$tool"
    ratio=$(awk -v a="${IPS[$job/photoq]}" -v b="${IPS[$job/$tool]}" \
      'BEGIN {if (b + 0 > 0) printf "%.2fx", a / b; else printf "-"}')
    printf '%-10s %-14s %9s %9s %10s %9s %11s\n' "$job" "$tool" "${IPS[$job/$tool]}" \
      "${RSS[$job/$tool]}" "${DSSIM_OF[$job/$tool]}" "${KIB[$job/$tool]}" "$ratio" >>"$WORK/results"
  done
done
cp "$WORK/results" "$CACHE/results.txt"
cat "$WORK/results"
echo
echo "$n photos of $(basename "$SET"); images/s: photos / median wall time of $RUNS runs after a"
echo "warm-up (process start-up included); peak MiB: median maximum RSS; DSSIM: mean over both"
echo "sizes; KiB/file: mean output size. photoq AVIF quality $OUR_AVIF_QUALITY, speed $OUR_AVIF_SPEED,"
echo "$OUR_AVIF_CHROMA; sharp AVIF quality $SHARP_AVIF_QUALITY. $(nproc) cores, $(uname -m)."
