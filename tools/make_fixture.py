#!/usr/bin/env python3
"""Writes tests/fixtures/preprocess/: what Pillow (the reference's resizer) does to a few small
deterministic images, for tests/cpu/preprocess.rs to compare ocrvl's preprocessing against.

Usage: python3 tools/make_fixture.py [OUT_DIR]      (needs: pip install pillow numpy)

The steps mirror the reference pipeline of MODEL_SPEC section 5.3 as transformers runs it with
the hub's preprocessor_config.json: `convert_to_rgb` (alpha composited on white), PIL
`resize(..., BICUBIC)` to the `smart_resize` size, `rescale` (float64 multiply, stored float32),
`normalize` (float32), patchify. transformers itself is not needed: each step is a few lines of
PIL or numpy, written out below. Small min/max pixel bounds keep the outputs a few KB.

Everything is seeded or a closed-form pattern, so a rerun with the same Pillow gives the same
bytes. The manifest records the Pillow and numpy versions used.
"""

import json
import math
import os
import sys

import numpy as np
import PIL
from PIL import Image

# Small bounds for the small cases: 4 and 16 blocks of 28x28.
SMALL_MIN, SMALL_MAX = 4 * 28 * 28, 16 * 28 * 28
# The hub's bounds (preprocessor_config.json).
HUB_MIN, HUB_MAX = 112896, 1003520
FACTOR = 28
PATCH = 14


def smart_resize(height, width, factor=FACTOR, min_pixels=HUB_MIN, max_pixels=HUB_MAX):
    """MODEL_SPEC section 5.2, the hub's function (Python round is half to even)."""
    if height < factor:
        width = round(width * factor / height)
        height = factor
    if width < factor:
        height = round(height * factor / width)
        width = factor
    if max(height, width) / min(height, width) > 200:
        raise ValueError("aspect ratio over 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def convert_to_rgb(image):
    """transformers.image_transforms.convert_to_rgb: composite on white, then drop alpha."""
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def zone_plate(width, height):
    """A closed-form test pattern with energy at every frequency (it aliases badly without an
    antialiasing filter). tests/cpu/preprocess.rs computes the same integers."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    chans = []
    for c in range(3):
        v = (3 * x * x + 5 * y * y + x * y) // 16 + (x ^ y) * (c + 1) + 85 * c
        chans.append(v % 256)
    return np.stack(chans, axis=-1).astype(np.uint8)


def fnv1a64_rows(arr):
    """FNV-1a 64 of each row's bytes, vectorised over rows (numpy uint64 wraps on overflow)."""
    rows = arr.reshape(arr.shape[0], -1)
    h = np.full(rows.shape[0], 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    for col in range(rows.shape[1]):
        h ^= rows[:, col].astype(np.uint64)
        h *= prime
    return h


def normalized_patches(resized):
    """rescale (float64 multiply, float32 result) + normalize (float32) + patchify (c, ky, kx)."""
    x = (resized.astype(np.float64) * 0.00392156862745098).astype(np.float32)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    h, w, _ = x.shape
    gh, gw = h // PATCH, w // PATCH
    x = x.transpose(2, 0, 1).reshape(3, gh, PATCH, gw, PATCH)
    return x.transpose(1, 3, 0, 2, 4).reshape(gh * gw, 3 * PATCH * PATCH)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "preprocess")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20251016)
    manifest = {
        "generator": "tools/make_fixture.py",
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "resize_cases": [],
        "decode_cases": [],
    }

    def add_resize_case(name, image, min_pixels, max_pixels, save_input=True, row_hashes=False):
        rgb = convert_to_rgb(image)
        h, w = smart_resize(rgb.height, rgb.width, FACTOR, min_pixels, max_pixels)
        resized = rgb.resize((w, h), Image.BICUBIC)
        case = {"name": name, "width": image.width, "height": image.height,
                "min_pixels": min_pixels, "max_pixels": max_pixels,
                "resized_height": h, "resized_width": w}
        if save_input:
            case["input"] = f"{name}.png"
            image.save(os.path.join(out, case["input"]), optimize=True)
        else:
            case["procedural"] = "zone_plate"
        if row_hashes:
            case["expected_row_fnv1a64"] = f"{name}.rows.bin"
            fnv1a64_rows(np.asarray(resized)).astype("<u8").tofile(os.path.join(out, case["expected_row_fnv1a64"]))
        else:
            case["expected"] = f"{name}.resized.png"
            resized.save(os.path.join(out, case["expected"]), optimize=True)
        manifest["resize_cases"].append(case)
        return np.asarray(resized)

    # 1. Noise: down in height (47 -> 56 is up, 61 -> 56 is down): both branches of the filter.
    noise = Image.fromarray(rng.integers(0, 256, size=(47, 61, 3), dtype=np.uint8), "RGB")
    noise_resized = add_resize_case("noise_rgb", noise, SMALL_MIN, SMALL_MAX)
    # 2. A thin gradient: the short side is stretched to 28 first, then upscaled.
    y, x = np.mgrid[0:13, 0:200]
    grad = np.stack([x * 255 // 199, y * 255 // 12, (x + 3 * y) % 256], axis=-1).astype(np.uint8)
    add_resize_case("gradient_rgb", Image.fromarray(grad, "RGB"), SMALL_MIN, SMALL_MAX)
    # 3. RGBA with every kind of alpha (0, partial, 255): composited on white, then downscaled.
    #    The height loses more than twice as many pixels as the width (92 vs 34), so Pillow 13
    #    runs the vertical pass first here (Pillow 12 and earlier: horizontal first).
    y, x = np.mgrid[0:260, 0:90]
    rgba = np.stack([(x * 3) % 256, (y * 7) % 256, (x * y) % 256,
                     np.clip((x - 10) * 4, 0, 255) * ((y // 20) % 2) + ((y // 20 + 1) % 2) * 255],
                    axis=-1).astype(np.uint8)
    add_resize_case("alpha_rgba", Image.fromarray(rgba, "RGBA"), SMALL_MIN, SMALL_MAX)
    # 4. A 5.5x antialiased downscale of a closed-form pattern (input not stored).
    add_resize_case("zone_plate_450x630", Image.fromarray(zone_plate(450, 630), "RGB"),
                    SMALL_MIN, SMALL_MAX, save_input=False)
    # 5. An A4 page at 150 dpi with the hub's bounds: 1754x1240 -> 1176x840. Only per-row hashes
    #    of the expected output are stored (9 KB instead of 3 MB).
    add_resize_case("zone_plate_a4", Image.fromarray(zone_plate(1240, 1754), "RGB"),
                    HUB_MIN, HUB_MAX, save_input=False, row_hashes=True)

    # Normalised patches of case 1.
    patches = normalized_patches(noise_resized)
    patches.astype("<f4").tofile(os.path.join(out, "noise_rgb.patches.f32"))
    manifest["patches"] = {"case": "noise_rgb", "file": "noise_rgb.patches.f32",
                           "num_patches": int(patches.shape[0]), "patch_dim": int(patches.shape[1]),
                           "grid": [1, noise_resized.shape[0] // PATCH, noise_resized.shape[1] // PATCH]}

    # Alpha compositing, every (value, alpha) pair: pixel (x = value, y = alpha), grey.
    v, a = np.meshgrid(np.arange(256), np.arange(256))
    table = np.stack([v, v, v, a], axis=-1).astype(np.uint8)
    composited = np.asarray(convert_to_rgb(Image.fromarray(table, "RGBA")))
    assert (composited[..., 0] == composited[..., 1]).all() and (composited[..., 0] == composited[..., 2]).all()
    Image.fromarray(composited[..., 0], "L").save(os.path.join(out, "composite_white.png"), optimize=True)
    manifest["composite"] = {"file": "composite_white.png",
                             "layout": "pixel (x, y) holds RGBA (x, x, x, y) composited on white"}

    # Decoding: PIL's decoded pixels for lossy and palette formats (libjpeg-turbo, libwebp, GIF).
    y, x = np.mgrid[0:24, 0:32]
    photo = np.stack([x * 8, y * 10, ((x // 4 + y // 4) % 2) * 200 + 20], axis=-1).astype(np.uint8)
    photo_img = Image.fromarray(photo, "RGB")
    gif_img = Image.fromarray(((x // 4 + y // 3) % 6).astype(np.uint8), "P")
    gif_img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 10, 30, 60, 90])
    for name, img, ext, kwargs in [
        ("jpeg", photo_img, "jpg", {"quality": 85, "subsampling": 2}),
        ("webp_lossy", photo_img, "webp", {"quality": 80}),
        ("webp_lossless", Image.fromarray(rgba[:24, :32], "RGBA"), "webp", {"lossless": True}),
        ("gif_transparent", gif_img, "gif", {"transparency": 3}),
    ]:
        path = os.path.join(out, f"decode_{name}.{ext}")
        img.save(path, **kwargs)
        decoded = np.asarray(convert_to_rgb(Image.open(path)))
        decoded.astype(np.uint8).tofile(os.path.join(out, f"decode_{name}.rgb"))
        manifest["decode_cases"].append({"name": name, "input": f"decode_{name}.{ext}",
                                         "expected_rgb": f"decode_{name}.rgb",
                                         "width": int(decoded.shape[1]), "height": int(decoded.shape[0])})

    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"wrote {len(os.listdir(out))} files, {total / 1024:.1f} KiB, to {os.path.normpath(out)}")


if __name__ == "__main__":
    main()
