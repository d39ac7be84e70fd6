#!/usr/bin/env python3
"""Write the small reference fixtures in tests/fixtures/ (preprocessing + backbone parity).

Usage (repository root; needs models/*.onnx from scripts/export_models.py)::

    .venv/bin/python scripts/make_reference.py [--shared /work/shared] [--out tests/fixtures]

Preprocessing reference = what anomalib 2.x does to an image file, minus the final
mean/std normalisation:

    PIL Image.open(p).convert("RGB") -> uint8 HWC -> float32 / 255 -> CHW tensor
    -> torchvision.transforms.v2.Resize((224, 224), antialias=True)   (bilinear)
    -> saved as float32 .npy, shape (3, 224, 224)

Files written (see tests/fixtures/README.md, also generated here, for the full table):

* ``chelsea.png`` (scikit-image's chelsea, RGB 451x300) and ``pre_chelsea.npy``
* ``pre_magnetic_tile.npy``, ``pre_elpv.npy`` from the first sorted file of
  ``data/<set>/test/good`` under the shared folder (the images are NOT copied here)
* ``chelsea16.png`` (16-bit grayscale, 97x61) and ``pre_chelsea16.npy`` (value / 65535)
* ``chelsea16_rgb.png`` (16-bit RGB, 97x61) and ``pre_chelsea16_rgb.npy`` (value / 65535)
* ``chelsea_rgba.png`` (8-bit RGBA, 97x61) and ``pre_chelsea_rgba.npy`` (alpha dropped)
* ``effnet_input.npy`` (1,3,224,224) = ImageNet-normalised ``pre_chelsea``
* ``effnet_output_ort.npy`` (1,1280), ``resnet18_output_ort.npy`` (1,512): onnxruntime,
  1 thread, on ``effnet_input``
* ``effnet_output_ort_pre3.npy`` (3,1280): onnxruntime on the normalised
  [pre_chelsea, pre_magnetic_tile, pre_elpv]
* ``manifest.json``: shape/dtype/sha256 of every file, source paths, versions
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import PIL
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

REPO_ROOT = Path(__file__).resolve().parent.parent
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)
SIZE = 224
SMALL_W, SMALL_H = 97, 61  # odd, non-square


def sha256_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def resize_chw(x: np.ndarray) -> np.ndarray:
    """float32 CHW in [0,1] -> v2.Resize((224,224), antialias=True) (bilinear) -> float32 CHW."""
    assert x.dtype == np.float32 and x.ndim == 3 and x.shape[0] == 3
    t = torch.from_numpy(np.ascontiguousarray(x))
    y = v2.Resize((SIZE, SIZE), antialias=True)(t)
    return y.numpy().astype(np.float32, copy=False)


def anomalib_decode(path: Path) -> np.ndarray:
    """PIL convert("RGB") -> float32 CHW / 255 (anomalib's read_image)."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return (a.astype(np.float32) / 255.0).transpose(2, 0, 1)


def normalise(pre: np.ndarray) -> np.ndarray:
    return ((pre - MEAN) / STD).astype(np.float32)


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def write_png16_rgb(path: Path, a: np.ndarray) -> None:
    """Minimal PNG writer: 16-bit RGB (colour type 2, bit depth 16), no filter, big-endian."""
    h, w, c = a.shape
    assert c == 3 and a.dtype == np.uint16
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9))
    png += chunk(b"IEND", b"")
    path.write_bytes(png)


def read_png16_rgb(path: Path) -> np.ndarray:
    """Inverse of write_png16_rgb (filter type 0 only) — used to verify the file we wrote."""
    b = path.read_bytes()
    pos, idat, ihdr = 8, b"", None
    while pos < len(b):
        n = struct.unpack(">I", b[pos:pos + 4])[0]
        tag, data = b[pos + 4:pos + 8], b[pos + 8:pos + 8 + n]
        if tag == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", data)
        elif tag == b"IDAT":
            idat += data
        pos += 12 + n
    w, h = ihdr[0], ihdr[1]
    raw = zlib.decompress(idat)
    stride = 1 + w * 6
    rows = [np.frombuffer(raw[y * stride + 1:(y + 1) * stride], dtype=">u2") for y in range(h)]
    assert all(raw[y * stride] == 0 for y in range(h))
    return np.stack(rows).reshape(h, w, 3).astype(np.uint16)


def first_sorted(folder: Path) -> Path:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        raise SystemExit(f"no files in {folder}")
    return files[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="/work/shared", help="shared root holding data/")
    ap.add_argument("--out", default=str(REPO_ROOT / "tests" / "fixtures"))
    ap.add_argument("--models", default=str(REPO_ROOT / "models"))
    args = ap.parse_args()
    shared, out, models = Path(args.shared), Path(args.out), Path(args.models)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    from skimage import data as skdata

    manifest: dict = {"files": {}, "sources": {}, "notes": {}}

    def save(name: str, arr: np.ndarray) -> np.ndarray:
        arr = np.ascontiguousarray(arr)
        np.save(out / name, arr)
        return arr

    # ---- chelsea (RGB PNG, committed)
    chelsea = skdata.chelsea()  # (300, 451, 3) uint8
    Image.fromarray(chelsea, "RGB").save(out / "chelsea.png", optimize=True)
    pre_chelsea = save("pre_chelsea.npy", resize_chw(anomalib_decode(out / "chelsea.png")))
    assert np.array_equal(np.asarray(Image.open(out / "chelsea.png")), chelsea)

    # ---- shared data images (read at test time, not copied)
    pre = {"chelsea": pre_chelsea}
    for key, rel_dir in (("magnetic_tile", "data/magnetic_tile/test/good"),
                         ("elpv", "data/elpv_mono/test/good")):
        src = first_sorted(shared / rel_dir)
        rel = src.relative_to(shared).as_posix()
        with Image.open(src) as im:
            info = {"mode": im.mode, "size_wh": list(im.size), "format": im.format}
        manifest["sources"][f"pre_{key}.npy"] = {"path": rel, "sha256": sha256_file(src), **info}
        pre[key] = save(f"pre_{key}.npy", resize_chw(anomalib_decode(src)))

    # ---- small derived images: odd, non-square 97x61
    small = np.asarray(Image.fromarray(chelsea).resize((SMALL_W, SMALL_H), Image.Resampling.BILINEAR),
                       dtype=np.uint8)  # (61, 97, 3)
    rng = np.random.default_rng(1234)

    # 16-bit grayscale: luminance * 257 plus low-byte noise, so value/65535 != (value>>8)/255
    lum = small.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    g16 = np.clip(np.round(lum * 257.0 + rng.integers(-128, 128, lum.shape)), 0, 65535).astype(np.uint16)
    Image.fromarray(g16).save(out / "chelsea16.png")  # Pillow writes mode I;16 as 16-bit gray PNG
    back = np.asarray(Image.open(out / "chelsea16.png"))
    assert back.dtype == np.uint16 and np.array_equal(back, g16), (back.dtype, back.shape)
    x16 = (g16.astype(np.float32) / np.float32(65535.0))
    save("pre_chelsea16.npy", resize_chw(np.repeat(x16[None], 3, axis=0)))
    pil_rgb = np.asarray(Image.open(out / "chelsea16.png").convert("RGB"))
    manifest["notes"]["chelsea16.png"] = {
        "png": "16-bit grayscale (colour type 0, bit depth 16)",
        "reference": "raw uint16 / 65535 as float32, replicated to 3 channels, then Resize",
        "pil_convert_rgb": (f"Pillow {PIL.__version__} opens it as mode I;16 and convert('RGB') CLAMPS to "
                            f"0..255 (not >>8): {int((pil_rgb == 255).mean() * 100)}% of values become 255; "
                            "anomalib would see that clamped image"),
    }

    # 16-bit RGB (48-bit PNG), written by our own minimal encoder (Pillow cannot write it)
    rgb16 = np.clip(np.round(small.astype(np.float64) * 257.0 + rng.integers(-128, 128, small.shape)),
                    0, 65535).astype(np.uint16)
    write_png16_rgb(out / "chelsea16_rgb.png", rgb16)
    assert np.array_equal(read_png16_rgb(out / "chelsea16_rgb.png"), rgb16)
    with Image.open(out / "chelsea16_rgb.png") as im:
        pil_mode = im.mode
        pil_arr = np.asarray(im.convert("RGB"))
    pil_is_high_byte = bool(np.array_equal(pil_arr, (rgb16 >> 8).astype(np.uint8)))
    save("pre_chelsea16_rgb.npy", resize_chw((rgb16.astype(np.float32) / np.float32(65535.0)).transpose(2, 0, 1)))
    manifest["notes"]["chelsea16_rgb.png"] = {
        "png": "16-bit RGB (colour type 2, bit depth 16), single IDAT, filter 0",
        "reference": "raw uint16 / 65535 as float32, then Resize",
        "pil_convert_rgb": f"Pillow {PIL.__version__} opens it as mode {pil_mode}; "
                           f"convert('RGB') == high byte (v >> 8): {pil_is_high_byte}",
    }

    # RGBA 8-bit: alpha is a diagonal ramp; reference drops alpha (no compositing)
    yy, xx = np.mgrid[0:SMALL_H, 0:SMALL_W]
    alpha = np.clip((xx * 255 // (SMALL_W - 1) + yy * 3) % 256, 0, 255).astype(np.uint8)
    rgba = np.dstack([small, alpha])
    Image.fromarray(rgba, "RGBA").save(out / "chelsea_rgba.png")
    pre_rgba = anomalib_decode(out / "chelsea_rgba.png")
    assert np.array_equal((pre_rgba * 255).round().astype(np.uint8).transpose(1, 2, 0), small), \
        "PIL convert('RGB') on RGBA should just drop alpha"
    save("pre_chelsea_rgba.npy", resize_chw(pre_rgba))
    manifest["notes"]["chelsea_rgba.png"] = {
        "png": "8-bit RGBA (colour type 6)",
        "reference": "alpha dropped (== PIL convert('RGB'), checked), /255, then Resize",
    }

    # ---- backbone parity pairs
    x = save("effnet_input.npy", normalise(pre_chelsea)[None])
    eff = ort_session(models / "efficientnet_lite0_pooled.onnx")
    save("effnet_output_ort.npy", eff.run(["features"], {"input": x})[0].astype(np.float32))
    rn = ort_session(models / "resnet18_layer4_random.onnx")
    save("resnet18_output_ort.npy", rn.run(["features"], {"input": x})[0].astype(np.float32))
    x3 = np.stack([normalise(pre[k]) for k in ("chelsea", "magnetic_tile", "elpv")]).astype(np.float32)
    save("effnet_output_ort_pre3.npy", eff.run(["features"], {"input": x3})[0].astype(np.float32))

    # ---- manifest
    for p in sorted(out.iterdir()):
        if p.name in ("manifest.json", "README.md"):
            continue
        entry = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        if p.suffix == ".npy":
            a = np.load(p)
            entry.update(shape=list(a.shape), dtype=str(a.dtype), min=float(a.min()), max=float(a.max()))
        manifest["files"][p.name] = entry
    manifest["models"] = {p.name: sha256_file(p) for p in sorted(models.glob("*.onnx"))}
    manifest["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                            "onnxruntime": ort.__version__, "numpy": np.__version__, "pillow": PIL.__version__}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    write_readme(out, manifest)
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} files to {out}, {total} bytes")
    for k, v in manifest["files"].items():
        print(f"  {k:<28s} {v['bytes']:>8d} {v.get('shape', '')}")


def write_readme(out: Path, man: dict) -> None:
    src = man["sources"]
    f = man["files"]
    notes = man["notes"]
    rows = [
        ("chelsea.png", "scikit-image `data.chelsea()` (BSD-3-Clause), RGB 8-bit, 451×300 — the source of most fixtures"),
        ("pre_chelsea.npy", "preprocessing reference of `chelsea.png`"),
        ("pre_magnetic_tile.npy", f"preprocessing reference of `{src['pre_magnetic_tile.npy']['path']}` "
                                  f"(shared data, {src['pre_magnetic_tile.npy']['format']} mode "
                                  f"{src['pre_magnetic_tile.npy']['mode']}, "
                                  f"{'×'.join(map(str, src['pre_magnetic_tile.npy']['size_wh']))}); not copied here"),
        ("pre_elpv.npy", f"preprocessing reference of `{src['pre_elpv.npy']['path']}` "
                         f"(shared data, {src['pre_elpv.npy']['format']} mode {src['pre_elpv.npy']['mode']}, "
                         f"{'×'.join(map(str, src['pre_elpv.npy']['size_wh']))}); not copied here"),
        ("chelsea16.png", "chelsea shrunk to 97×61, luminance, 16-bit grayscale PNG (`lum·257` + random low-byte noise, so the low byte matters)"),
        ("pre_chelsea16.npy", "reference: raw 16-bit value / 65535 (float32), gray replicated to R=G=B, then Resize"),
        ("chelsea16_rgb.png", "chelsea shrunk to 97×61, 16-bit RGB PNG (48 bpp; `v·257` + low-byte noise), written by our own minimal PNG encoder"),
        ("pre_chelsea16_rgb.npy", "reference: raw 16-bit value / 65535 (float32) per channel, then Resize"),
        ("chelsea_rgba.png", "chelsea shrunk to 97×61, 8-bit RGBA with a diagonal alpha ramp"),
        ("pre_chelsea_rgba.npy", "reference: alpha dropped (exactly what PIL `convert(\"RGB\")` does — no compositing), /255, then Resize"),
        ("effnet_input.npy", "`pre_chelsea` ImageNet-normalised, batch of 1: the backbone input"),
        ("effnet_output_ort.npy", "onnxruntime (CPU, 1 thread) output of `models/efficientnet_lite0_pooled.onnx` on `effnet_input`"),
        ("resnet18_output_ort.npy", "onnxruntime output of `models/resnet18_layer4_random.onnx` on `effnet_input`"),
        ("effnet_output_ort_pre3.npy", "onnxruntime output of the EfficientNet graph on the normalised [pre_chelsea, pre_magnetic_tile, pre_elpv] (batch of 3, in that order)"),
        ("manifest.json", "machine-readable: shape, dtype, min/max, sha256 of every file; source paths + sha256; model hashes; versions"),
    ]
    table = "\n".join(
        f"| `{name}` | {('×'.join(map(str, f[name]['shape'])) + ' ' + f[name]['dtype']) if name in f and 'shape' in f[name] else ''} "
        f"| {f[name]['bytes'] if name in f else ''} | {desc} |" for name, desc in rows)
    text = f"""# tests/fixtures

Generated by `scripts/make_reference.py` (do not edit by hand). All `.npy` files are
little-endian, C-order, `.npy` v1.

## Preprocessing reference (what every `pre_*.npy` is)

anomalib 2.x's image path without the final normalisation:

1. decode with PIL: `Image.open(p).convert("RGB")` → uint8 H×W×3 (grayscale → R=G=B, alpha dropped);
2. `float32 / 255`, to CHW;
3. torchvision.transforms.v2 `Resize((224, 224), antialias=True)` — bilinear, antialiased,
   both sides to 224 (no aspect preservation, no crop), on the float tensor;
4. saved here, shape (3, 224, 224) float32, **before** `(x − mean)/std` with ImageNet
   mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).

The two shared-data images are read at test time from the shared folder (`../shared` next
to the repo on the developers' machines, `/work/shared` here); their paths relative to the
shared root:

| fixture | source (relative to the shared root) | sha256 of the source file |
|---|---|---|
| `pre_magnetic_tile.npy` | `{src['pre_magnetic_tile.npy']['path']}` | `{src['pre_magnetic_tile.npy']['sha256']}` |
| `pre_elpv.npy` | `{src['pre_elpv.npy']['path']}` | `{src['pre_elpv.npy']['sha256']}` |

(Each is the first file, by sorted name, of its `test/good` folder.)

Decoder notes for tests:
* The magnetic-tile image is a baseline grayscale JPEG decoded by Pillow's libjpeg(-turbo).
  Another JPEG decoder (e.g. Rust's `zune-jpeg`/`jpeg-decoder`) may differ by a few LSB per
  pixel (IDCT/upsampling implementation); compare with a tolerance of a few /255 or compare the
  backbone output instead.
* The ELPV PNG carries a `gAMA` chunk (0.45455). Pillow ignores it; so must we (no gamma
  correction) to match.
* 16-bit PNGs: the reference maps a 16-bit sample `v` to `v / 65535` (float32), computed from
  the raw array with numpy. This is **not** what PIL/anomalib do: {notes['chelsea16.png']['pil_convert_rgb']}.
  For the 16-bit RGB file: {notes['chelsea16_rgb.png']['pil_convert_rgb']}. So for 16-bit input
  vigil's `v / 65535` is a deliberate deviation (anomalib has no sane 16-bit path).
* RGBA: alpha is discarded, not composited over a background.
* Resize algorithm: torchvision's antialiased bilinear on a float tensor equals Pillow's
  `Image.resize((224, 224), BILINEAR)` applied to each channel as a float32 (`"F"` mode) image
  to ≤ 4e-6 (checked on chelsea, the magnetic-tile image and the 97×61 image): a separable
  triangle filter whose support is scaled by the downscale factor (support 1 when upscaling),
  sample centres at `(i + 0.5)·scale`, weights normalised per output pixel, no uint8 rounding
  between the passes. Plain (non-antialiased) bilinear differs by up to 0.1 when shrinking.

## Files

| file | shape / dtype | bytes | content |
|---|---|---|---|
{table}

Tolerances seen here: onnxruntime vs torch on the EfficientNet graph ≤ 4e-6 max abs
(features are in [0, 6]); a tract implementation should land within ~1e-4 of
`effnet_output_ort.npy`.

Versions: {', '.join(f'{k} {v}' for k, v in man['versions'].items())}.
Model hashes used: {', '.join(f'`{k}` `{v[:16]}…`' for k, v in man['models'].items())}.
"""
    (out / "README.md").write_text(text)


if __name__ == "__main__":
    main()
