"""Photos -> MNIST framing, and every kind of bad image or model file, one line each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_lit import classify
from tests.helpers import make_checkpoint, run


def paper_with_blob(height=300, width=400, box=(40, 250, 90, 140), ink=30, paper=235) -> np.ndarray:
    """Dark ink (a filled rectangle) on light paper at rows box[0]:box[1], columns box[2]:box[3]."""
    gray = np.full((height, width), paper, dtype=np.float32)
    gray[box[0]:box[1], box[2]:box[3]] = ink
    return gray


def center_of_mass(image: torch.Tensor) -> tuple[float, float]:
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    return float((ys * image).sum() / image.sum()), float((xs * image).sum() / image.sum())


@pytest.mark.parametrize("gray", [
    paper_with_blob(),                                            # dark on light, off-centre
    255 - paper_with_blob(),                                      # already light on dark
    paper_with_blob(2000, 1500, (1700, 1900, 100, 150)),          # tiny in a huge frame, in a corner
    paper_with_blob(40, 30, (2, 38, 5, 25)),                      # fills a small frame
], ids=["inverted", "mnist-polarity", "tiny-in-corner", "fills-frame"])
def test_to_mnist_frames_like_mnist(gray: np.ndarray):
    image = classify.to_mnist(gray)[0]
    rows, cols = torch.nonzero(image > 0.05, as_tuple=True)
    height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    assert max(height, width) in (20, 21) and image.max() == pytest.approx(1.0, abs=0.01)  # fit 20x20
    cy, cx = center_of_mass(image)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1  # centred by mass
    assert float(image[0].max()) == 0 and float(image[:, 0].max()) == 0  # black background


def test_to_fashion_keeps_fashion_framing():
    image = classify.to_fashion(paper_with_blob(box=(40, 250, 90, 180)))[0]
    rows, cols = torch.nonzero(image > 0.05, as_tuple=True)
    assert int(rows.max() - rows.min() + 1) == 28  # the longest side fills the frame


def save(array: np.ndarray, path: Path, mode: str = "L") -> Path:
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).convert(mode).save(path)
    return path


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "I;16"])
def test_every_image_mode_reads_the_same(mode: str, tmp_path: Path):
    gray = paper_with_blob()
    path = tmp_path / f"digit.{'tiff' if mode in ('CMYK', 'I;16') else 'png'}"
    if mode == "I;16":
        Image.fromarray((gray * 257).astype(np.uint16)).save(path)
    else:
        save(gray, path, mode)
    reference = classify.to_mnist(gray)
    assert torch.allclose(classify.to_mnist(classify.load_gray(path)), reference, atol=0.05)


def test_transparent_background_counts_as_paper(tmp_path: Path):
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)
    rgba[20:80, 45:55] = (0, 0, 0, 255)  # black ink, the rest fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ink.png")
    image = classify.to_mnist(classify.load_gray(tmp_path / "ink.png"))[0]
    assert image.max() == pytest.approx(1.0, abs=0.01) and float(image[0].max()) == 0


def test_classify_frames_as_the_model_s_data_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The metadata inside the model file picks the framing: Fashion-MNIST's for a Fashion model."""
    make_checkpoint("fashion_mlp", tmp_path / "fashion.ckpt")
    make_checkpoint("dense512", tmp_path / "digits.ckpt")
    photo = save(paper_with_blob(box=(40, 250, 90, 180)), tmp_path / "article.png")
    seen = {}
    for name in ("fashion", "digits"):
        model, meta = classify.load_model(tmp_path / f"{name}.ckpt")
        monkeypatch.setattr(classify, "to_fashion", lambda gray, n=name: seen.setdefault(n, "fashion") and
                            torch.zeros(1, 28, 28))
        monkeypatch.setattr(classify, "to_mnist", lambda gray, n=name: seen.setdefault(n, "mnist") and
                            torch.zeros(1, 28, 28))
        classify.classify(model, meta, photo)
    assert seen == {"fashion": "fashion", "digits": "mnist"}


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    make_checkpoint("cnn", tmp_path / "model.ckpt")
    return tmp_path / "model.ckpt"


def test_bad_images_fail_one_line_each_and_the_rest_still_run(model_file: Path, tmp_path: Path, capsys):
    good = save(paper_with_blob(), tmp_path / "good.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])
    save(np.full((300, 300), 240.0), tmp_path / "blank.png")
    save(np.zeros((1, 1)), tmp_path / "dot.png")
    Image.new("1", (8000, 7000)).save(tmp_path / "huge.png")  # 56 megapixels
    frames = [Image.fromarray(paper_with_blob(100, 100, (20, 80, 40, 60)).astype(np.uint8)), Image.new("L", (100, 100), 240)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    names = ["good.png", "notes.txt", "empty.png", "cut.png", "blank.png", "dot.png", "huge.png", "anim.gif"]
    assert run("classify", "--model", str(model_file), *[str(tmp_path / n) for n in names], "--json") == 1
    out = capsys.readouterr()
    results = {Path(r["file"]).name: r for r in map(json.loads, out.out.splitlines())}
    assert set(results) == set(names)
    assert "class" in results["good.png"] and "class" in results["anim.gif"]  # first frame used
    assert results["notes.txt"]["error"].startswith("not an image")
    assert results["empty.png"]["error"] == "empty file"
    assert results["cut.png"]["error"].startswith(("unreadable image", "not an image"))
    assert results["blank.png"]["error"] == "no ink found (blank image)"
    assert results["dot.png"]["error"] == "image is 1x1 pixels, too small to hold a digit"
    assert results["huge.png"]["error"] == "image of 8000x7000 is over 50 megapixels"
    assert out.err == "mnist_lit: 6 of 8 images could not be classified\n"


def test_text_output_and_preprocessed_images(model_file: Path, tmp_path: Path, capsys):
    save(paper_with_blob(), tmp_path / "a.png")
    assert run("classify", "--model", str(model_file), str(tmp_path), "--save-preprocessed", str(tmp_path / "seen")) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{tmp_path / 'a.png'}: ") and line.endswith(")")
    seen = np.asarray(Image.open(tmp_path / "seen" / "a.png"))
    assert seen.shape == (28, 28) and seen.max() == 255 and seen[0].max() == 0


@pytest.mark.parametrize("fmt", ["torchscript", "pt2", "onnx"])
def test_every_model_format_gives_the_checkpoints_answer(fmt: str, model_file: Path, tmp_path: Path):
    from mnist_lit import export

    save(paper_with_blob(), tmp_path / "a.png")
    reference, meta = classify.load_model(model_file)
    exported, _ = classify.load_model(export.export(model_file, fmt))
    image = classify.to_mnist(classify.load_gray(tmp_path / "a.png"))[None]
    assert torch.allclose(exported(image), reference(image), atol=1e-5) and meta["classes"][3] == "3"


@pytest.mark.parametrize("name, message", [
    ("model.h5", "not a model file this reads (.ckpt, .pt, .pt2, .onnx or .pte)"),
    ("broken.pte", "cannot load the model (ValueError: not an ExecuTorch program)"),
    ("missing.pt", "no such model file"),
    ("broken.pt2", "cannot load the model"),
])
def test_bad_model_files(name: str, message: str, tmp_path: Path, capsys):
    if name != "missing.pt":
        (tmp_path / name).write_bytes(b"\x00" * 64)
    save(paper_with_blob(), tmp_path / "a.png")
    assert run("classify", "--model", str(tmp_path / name), str(tmp_path / "a.png")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
