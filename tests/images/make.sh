#!/usr/bin/env bash
# Makes the HEIC and AVIF test images from the PNGs beside this script, with Debian's own
# encoders (packages libheif-examples and libavif-bin); the results are committed, so the
# tests need neither. tests/colour.rs checks that the charts hold what it expects of them.
#
#   chart-p3.png     125 flat patches (every mix of 0, 64, 128, 192, 255), Display P3 profile
#   chart-16bit.png  the same patches, 16 bits a channel, no profile (sRGB)
#   alpha.png        opaque red left, half-transparent blue right
# and two CMYK JPEGs (below) from nothing.
set -euo pipefail
cd "$(dirname "$0")"

# HEVC, 4:2:0 as phones write it; the PNG's ICC profile goes into the file.
heif-enc -q 90 -o chart-p3.heic chart-p3.png
heif-enc -q 90 -o alpha.heic alpha.png
# AV1 with the ICC profile; the same values described by colour code points (nclx: P3
# primaries, sRGB transfer) instead of a profile; 10 bits from the 16-bit PNG.
avifenc -s 6 --min 0 --max 8 chart-p3.png chart-p3.avif >/dev/null
avifenc -s 6 --min 0 --max 8 --ignore-icc --cicp 12/13/1 chart-p3.png chart-p3-nclx.avif >/dev/null
avifenc -s 6 --min 0 --max 8 -d 10 chart-16bit.png chart-10bit.avif >/dev/null
avifenc -s 6 --min 0 --max 8 alpha.png alpha.avif >/dev/null
# CMYK JPEGs of a flat sRGB green (0, 200, 40), without a profile (converted by the plain
# complement): YCCK as libjpeg writes CMYK by default (ImageMagick), and plain CMYK with
# Adobe's inverted storage (Pillow, Debian's python3-pil).
convert -size 64x48 'xc:rgb(0,200,40)' -colorspace CMYK -quality 95 ycck.jpg
python3 -c "from PIL import Image
Image.new('RGB', (64, 48), (0, 200, 40)).convert('CMYK').save('cmyk.jpg', quality=95)"
