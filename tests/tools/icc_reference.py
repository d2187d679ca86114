"""Reference colour conversion for tests/colour.rs: lcms2 (through Pillow's ImageCms)
converts an image with an embedded ICC profile to sRGB, perceptual intent.

    python icc_reference.py IN OUT
"""
import io
import sys

from PIL import Image, ImageCms

source = Image.open(sys.argv[1])
profile = ImageCms.ImageCmsProfile(io.BytesIO(source.info["icc_profile"]))
srgb = ImageCms.createProfile("sRGB")
converted = ImageCms.profileToProfile(
    source.convert("RGB"),
    profile,
    srgb,
    renderingIntent=ImageCms.Intent.PERCEPTUAL,
    outputMode="RGB",
)
converted.save(sys.argv[2])
