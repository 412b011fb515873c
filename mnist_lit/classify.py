"""Classify real photos with any exported model: photo -> MNIST-style 28x28 -> class and probability.

MNIST digits are light ink on black, the ink scaled to fit 20x20 and centred by centre of mass in 28x28.
A photo of a digit is dark ink on light paper, anywhere in the frame, at any size: `to_mnist` undoes that.
Fashion-MNIST keeps its own framing (the article scaled to fit 28x28, centred).

    python -m mnist_lit classify --model checkpoints/cnn/model.pt photo.jpg more_photos/ [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from mnist_lit.errors import UserError
from mnist_lit.model_files import Predict, load_model

MAX_PIXELS = 50_000_000
# Framing works on at most about this many pixels: a digit is scaled to 20x20 in the end, and a phone's 9 MP
# photo, reduced to this, costs a few times less to frame (docs/benchmarks.md#serving)
FRAME_PIXELS = 1_000_000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
MIN_SIDE = 8  # smaller than this cannot hold a legible digit
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")  # JPEG covers phones' MPO files; PPM, PGM


class ImageError(Exception):
    """This one file cannot be classified; the others still are."""


class NotAnImage(ImageError):
    """The bytes are no image format that Pillow reads."""


# ---------------------------------------------------------------- images


def load_gray(path: Path | BinaryIO) -> np.ndarray:
    """Any image file (a path or an open binary file) as a float32 grey array in [0, 255] (first frame of
    an animation)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.init()  # every plugin registered, so FORMATS can name them
            image = Image.open(path, formats=FORMATS)  # raster formats only: Pillow would hand EPS to Ghostscript
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"image of {width}x{height} is over {MAX_PIXELS // 1_000_000} megapixels")
            image.seek(0)  # animated GIF / multi-page TIFF: the first frame
            k = _reduction(image.size)
            image.draft(image.mode, (width // k, height // k))  # JPEG only: decoded at 1/2, 1/4 or 1/8 of its size
            image.load()
        if min(image.size) < MIN_SIDE:
            raise ImageError(f"image is {image.size[0]}x{image.size[1]} pixels, too small to hold a digit")
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")  # transparent parts become white paper
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        if image.mode.startswith("I") or image.mode == "F":  # 16- or 32-bit grey: rescale to 0..255
            array = np.asarray(image, dtype=np.float32)
            if not np.isfinite(array).all():
                raise ImageError("unreadable image (pixels that are not numbers)")
            low, high = float(array.min()), float(array.max())
            return (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        gray = image.convert("L")
        return np.asarray(gray.reduce(_reduction(gray.size)), dtype=np.float32)  # the mean of k x k pixels
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if isinstance(e, UnidentifiedImageError):
            raise NotAnImage("not an image format this reads (PNG, JPEG, GIF, BMP, TIFF, WebP, PGM...)") from None
        raise ImageError("image is too large (decompression bomb)") from None
    except (OSError, SyntaxError, ValueError, TypeError) as e:  # a truncated file, a mode Pillow cannot convert (LAB),
        # a damaged TIFF tag (TypeError)...
        raise ImageError(f"unreadable image ({str(e).splitlines()[0] if str(e) else e.__class__.__name__})") from None


def _reduction(size: tuple[int, int]) -> int:
    """The whole factor k that brings an image of this size within FRAME_PIXELS (1 when it is)."""
    return max(1, math.ceil(math.sqrt(size[0] * size[1] / FRAME_PIXELS)))


def _ink(gray: np.ndarray) -> np.ndarray:
    """Ink as light on black, 0..1: inverted when the paper (the border) is lighter than the ink."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    ink = background - gray if background > 127 else gray - background
    ink = np.clip(ink, 0, None)
    peak = float(ink.max())
    if peak < 40:  # less contrast than this is paper texture or noise, not a digit
        raise ImageError("no ink found (blank image)")
    ink = ink / peak
    return np.where(ink < 0.15, 0.0, ink)  # paper grain and shadows are not ink


def _resize(ink: np.ndarray, height: int, width: int) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(ink, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0, 0]


def _crop(ink: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(ink > 0.3)
    if not len(rows):  # faint specks only
        raise ImageError("no ink found (blank image)")
    return ink[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]


def _fit(gray: np.ndarray, side: int) -> torch.Tensor:
    """The ink, cropped and scaled so its longer side is `side` pixels, keeping the aspect ratio."""
    ink = _crop(_ink(gray))
    h, w = ink.shape
    scale = side / max(h, w)
    return _resize(ink, max(1, round(h * scale)), max(1, round(w * scale)))


def _paste(patch: torch.Tensor, top: int, left: int) -> torch.Tensor:
    out = torch.zeros(28, 28)
    out[top: top + patch.shape[0], left: left + patch.shape[1]] = patch
    return out.clamp(0, 1)[None]


def to_mnist(gray: np.ndarray) -> torch.Tensor:
    """A digit photo as MNIST draws it: 1 x 28 x 28 in [0, 1], ink fit to 20x20, centred by mass."""
    patch = _fit(gray, 20)
    ys, xs = torch.meshgrid(torch.arange(patch.shape[0]), torch.arange(patch.shape[1]), indexing="ij")
    mass = patch.sum()
    cy, cx = float((ys * patch).sum() / mass), float((xs * patch).sum() / mass)
    top = min(max(round(14 - cy), 0), 28 - patch.shape[0])
    left = min(max(round(14 - cx), 0), 28 - patch.shape[1])
    return _paste(patch, top, left)


def to_fashion(gray: np.ndarray) -> torch.Tensor:
    """A product photo as Fashion-MNIST frames it: light on black, longest side 28, centred."""
    patch = _fit(gray, 28)
    return _paste(patch, (28 - patch.shape[0]) // 2, (28 - patch.shape[1]) // 2)


# ---------------------------------------------------------------- command


def image_files(arguments: list[str]) -> list[Path]:
    files: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)  # named explicitly: tried whatever it is
    return files


def frame(meta: dict[str, Any], source: Path | BinaryIO) -> torch.Tensor:
    """An image file as the model's data set frames it: 1 x 28 x 28 in [0, 1]. Raises ImageError."""
    gray = load_gray(source)
    return (to_fashion if meta.get("dataset") == "fashion_mnist" else to_mnist)(gray)


def answer(meta: dict[str, Any], probs: torch.Tensor) -> dict[str, Any]:
    """One image's 10 probabilities as the class name, its index and probability, and all ten."""
    index = int(probs.argmax())
    return {"class": meta["classes"][index], "index": index, "probability": round(float(probs[index]), 6),
            "probabilities": [round(float(p), 6) for p in probs]}


def classify(model: Predict, meta: dict[str, Any], path: Path, save_dir: Path | None = None) -> dict[str, Any]:
    if not path.is_file():
        raise ImageError("no such file")
    if path.stat().st_size == 0:
        raise ImageError("empty file")
    image = frame(meta, path)
    if save_dir is not None:
        from PIL import Image

        save_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(save_dir / f"{path.stem}.png")
    return {"file": str(path), **answer(meta, model(image[None])[0])}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_lit classify", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a .ckpt, .pt (TorchScript), .pt2, .onnx or .pte (ExecuTorch) model file")
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--save-preprocessed", type=Path, metavar="DIR", help="write the 28x28 image the model saw")
    args = parser.parse_args(argv)
    model, meta = load_model(args.model)
    files = image_files(args.images)
    if not files:
        raise UserError(f"no images in {' '.join(args.images)}")
    failed = 0
    for path in files:
        try:
            result = classify(model, meta, path, args.save_preprocessed)
        except ImageError as e:
            failed += 1
            print(json.dumps({"file": str(path), "error": str(e)}) if args.json else f"{path}: error: {e}", flush=True)
            continue
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(f"{path}: {result['class']} ({result['probability']:.3f})", flush=True)
    if failed:
        print(f"mnist_lit: {failed} of {len(files)} images could not be classified", file=sys.stderr)
    return 1 if failed else 0
