"""Digit photos that are not MNIST: handwritten MNIST test digits printed as dark ink on light paper,
off-centre, small or large in a frame of any size, grey or colour, JPEG or PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_photos(images, labels, folder: Path, count: int, seed: int = 0) -> list[tuple[Path, int]]:
    """`count` photos of images[i] (uint8 N x 1 x 28 x 28, light on black) in `folder`, with their labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(count):
        digit = Image.fromarray(images[i, 0].numpy())
        width, height = int(rng.integers(64, 640)), int(rng.integers(64, 640))
        side = int(min(width, height) * rng.uniform(0.25, 0.95))  # small or large in the frame
        ink = np.asarray(digit.resize((side, side), Image.BICUBIC), dtype=np.float32) / 255
        paper = rng.uniform(170, 250) + np.linspace(-15, 15, width)[None, :] * rng.uniform(-1, 1)  # uneven light
        paper = np.broadcast_to(paper, (height, width)) + rng.normal(0, 4, (height, width))  # paper grain
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))  # off-centre
        colour = rng.random() < 0.5
        pen = rng.uniform(10, 90, size=3) if colour else np.full(3, rng.uniform(10, 90))
        tint = rng.uniform(0.9, 1.0, size=3) if colour else np.ones(3)
        photo = np.repeat(paper[..., None], 3, axis=2) * tint
        alpha = np.zeros((height, width, 1), dtype=np.float32)
        alpha[top: top + side, left: left + side, 0] = ink
        photo = photo * (1 - alpha) + pen * alpha
        image = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8), "RGB")
        if not colour:
            image = image.convert("L")
        suffix = ".jpg" if rng.random() < 0.5 else ".png"
        path = folder / f"photo_{i:04d}_label{int(labels[i])}{suffix}"
        image.save(path, quality=int(rng.integers(70, 95))) if suffix == ".jpg" else image.save(path)
        made.append((path, int(labels[i])))
    return made
