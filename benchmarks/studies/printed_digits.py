"""How a trained digit model does on printed (typed) digits, with mnist_lit's framing and the tutorial's.

    python -m benchmarks.studies.printed_digits checkpoints/cnn/model.pt [--per-digit 5]   # from the repo root

Renders each digit in the DejaVu fonts that matplotlib ships (no download), dark on light paper of
random size and shade, wholly inside the frame at a random place and size, and prints the accuracy of
`classify` (MNIST framing) and of the tutorial's recipe (resize the photo to 28x28, divide by 255).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mnist_lit import classify

FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .ckpt, .pt, .pt2 or .onnx digit model")
    parser.add_argument("--per-digit", type=int, default=5, help="images per digit and font")
    args = parser.parse_args()
    model, meta = classify.load_model(args.model)
    font_dir = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"
    rng = random.Random(0)
    ours = naive = total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for font_name in FONTS:
            for digit in range(10):
                for k in range(args.per_digit):
                    width, height = rng.randint(80, 500), rng.randint(80, 500)
                    font = ImageFont.truetype(str(font_dir / font_name), int(min(width, height) * rng.uniform(0.3, 0.8)))
                    left, top, right, bottom = font.getbbox(str(digit))
                    x = rng.randint(-left, max(-left, width - right))
                    y = rng.randint(-top, max(-top, height - bottom))
                    image = Image.new("L", (width, height), rng.randint(180, 250))
                    ImageDraw.Draw(image).text((x, y), str(digit), fill=rng.randint(0, 80), font=font)
                    path = Path(tmp) / f"{font_name}_{digit}_{k}.png"
                    image.save(path)
                    ours += classify.classify(model, meta, path)["index"] == digit
                    x28 = torch.from_numpy(np.asarray(image.resize((28, 28)), dtype=np.float32) / 255)[None, None]
                    naive += int(model(x28).argmax()) == digit
                    total += 1
    print(f"{total} printed digits in {', '.join(FONTS)}: tutorial recipe {naive / total:.3f}, "
          f"mnist_lit framing {ours / total:.3f}")


if __name__ == "__main__":
    main()
