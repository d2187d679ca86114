#!/usr/bin/env node
// sharp's side of benches/formats_vs_sharp.sh: every image of IN_DIR (JPEG, HEIC or AVIF)
// decoded once, turned upright by its EXIF orientation, converted to sRGB from its profile
// (sharp's default), resized to a 1280 px long edge and from that to 256 px, both written
// without metadata as JPEG q80 or as AVIF.
//
//   node formats_sharp.js jpeg|avif IN_DIR OUT_DIR [CONCURRENCY=2] [AVIF_QUALITY=50]
//
// NODE_PATH must reach a node_modules with sharp. Prints one line with images/s.
'use strict';
const fs = require('fs');
const path = require('path');
const sharp = require('sharp');

const [format, inDir, outDir, concArg, qualityArg] = process.argv.slice(2);
const concurrency = parseInt(concArg || '2', 10);
const avifQuality = parseInt(qualityArg || '50', 10);
if (!['jpeg', 'avif'].includes(format) || !inDir || !outDir) {
  console.error('usage: formats_sharp.js jpeg|avif IN_DIR OUT_DIR [CONCURRENCY] [AVIF_QUALITY]');
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });
const files = fs.readdirSync(inDir).filter((f) => /\.(jpe?g|heic|avif)$/i.test(f)).sort();
const box = (n) => ({ width: n, height: n, fit: 'inside' });
const encode = (img) => (format === 'jpeg' ? img.jpeg({ quality: 80 }) : img.avif({ quality: avifQuality }));
const extension = format === 'jpeg' ? 'jpg' : 'avif';

async function one(file) {
  const stem = file.replace(/\.[^.]+$/, '');
  const out = (n) => path.join(outDir, `${stem}_${n}.${extension}`);
  const { data, info } = await sharp(path.join(inDir, file))
    .rotate()
    .resize(box(1280))
    .raw()
    .toBuffer({ resolveWithObject: true });
  const raw = { raw: { width: info.width, height: info.height, channels: info.channels } };
  await Promise.all([
    encode(sharp(data, raw)).toFile(out(1280)),
    encode(sharp(data, raw).resize(box(256))).toFile(out(256)),
  ]);
}

(async () => {
  const start = process.hrtime.bigint();
  let next = 0;
  const worker = async () => {
    while (next < files.length) await one(files[next++]);
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const secs = Number(process.hrtime.bigint() - start) / 1e9;
  console.log(`sharp ${sharp.versions.sharp} libvips ${sharp.versions.vips} ${format} ` +
    `files=${files.length} s=${secs.toFixed(3)} images/s=${(files.length / secs).toFixed(2)}`);
})().catch((e) => {
  console.error(e.message);
  process.exit(1);
});
