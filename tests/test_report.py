"""The figures show the logged numbers, name Fashion-MNIST's classes, and `report` redraws them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from matplotlib import font_manager

from mnist_lit import report
from mnist_lit.data import DATASETS
from mnist_lit.models import TUTORIALS
from tests.helpers import KERAS_PARAMS, fit, run


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_summary_totals_equal_keras(name: str):
    text = report.keras_summary(TUTORIALS[name]().net, name)
    assert f"Total params: {KERAS_PARAMS[name]:,}" in text and f'Model: "{name}"' in text
    layer_params = [int(line.split()[-1].replace(",", "")) for line in text.splitlines()
                    if line.split() and line.split()[0] in ("Linear", "Conv2d")]
    assert sum(layer_params) == KERAS_PARAMS[name]


def test_cnn_summary_shapes_follow_keras():
    text = report.keras_summary(TUTORIALS["cnn"]().net, "cnn")
    assert "(None, 32, 26, 26)" in text and "(None, 64, 1, 1)" in text and "(None, 500)" in text


def test_curves_plot_the_logged_values(tmp_path: Path):
    history = [{"epoch": 1, "train_loss": 0.9, "train_acc": 0.7, "val_loss": 0.5, "val_acc": 0.8},
               {"epoch": 2, "train_loss": 0.4, "train_acc": 0.85, "val_loss": 0.45, "val_acc": 0.83},
               {"epoch": 3, "train_loss": 0.3, "train_acc": 0.9, "val_loss": 0.47, "val_acc": 0.84}]
    fig = report.plot_curves(history, tmp_path / "curves.png")
    loss_ax, acc_ax = fig.axes
    plotted = {(ax.get_title(), line.get_label()): list(line.get_ydata()) for ax in fig.axes for line in ax.lines}
    assert plotted[("Loss", "training")] == [0.9, 0.4, 0.3] and plotted[("Loss", "validation")] == [0.5, 0.45, 0.47]
    assert plotted[("Accuracy", "training")] == [0.7, 0.85, 0.9] and plotted[("Accuracy", "validation")] == [0.8, 0.83, 0.84]
    assert list(loss_ax.lines[0].get_xdata()) == [1, 2, 3] and loss_ax.get_xlabel() == "epoch"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_without_validation_show_training_and_the_test_result(tmp_path: Path):
    fig = report.plot_curves([{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}], tmp_path / "c.png",
                             {"test_loss": 0.8, "test_acc": 0.6})
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["training", "test after training (0.8000)"]
    assert list(acc_ax.lines[1].get_ydata()) == [0.6, 0.6]


def test_confusion_matrix_names_fashion_classes(tmp_path: Path):
    classes = list(DATASETS["fashion_mnist"].classes)
    matrix = torch.eye(10, dtype=torch.long).mul(90).add(1).tolist()
    fig = report.plot_confusion(matrix, classes, tmp_path / "cm.png", accuracy=0.9)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == classes
    assert ax.get_yticklabels()[9].get_text() == "Ankle boot (91.0%)"  # 91 of 100 right
    assert {t.get_text() for t in ax.texts} == {"91", "1"}


def test_report_redraws_a_run_and_refuses_an_empty_folder(data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert fit("fashion_mlp", data_root, out, "--trainer.max_epochs", "2") == 0
    for figure in ("curves.png", "confusion_matrix.png", "misclassified.png"):
        (out / figure).unlink()
    capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    for given in (out, out / "model.ckpt"):  # the run's folder, or its checkpoint
        assert run("report", str(given), "--data_dir", str(data_root)) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].endswith(f"Test: loss: {metrics['test_loss']:.4f} - acc: {metrics['test_acc']:.4f} (200 images)")
        assert lines[1].startswith("per class: T-shirt/top ") and lines[1].count(", ") == 9
        assert lines[2] == "Figures: " + ", ".join(str(out / f) for f in ("curves.png", "confusion_matrix.png",
                                                                           "misclassified.png"))
    for figure in ("curves.png", "confusion_matrix.png", "misclassified.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [e["epoch"] for e in history] == [1, 2]
    (tmp_path / "empty").mkdir()
    assert run("report", str(tmp_path / "empty")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no metrics.json or last.ckpt to report on" in err


def test_report_draws_an_interrupted_run_from_last_ckpt(data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert fit("tiny_mlp", data_root, out, "--trainer.max_epochs", "3") == 0
    for name in ("metrics.json", "model.ckpt", "curves.png", "confusion_matrix.png", "misclassified.png"):
        (out / name).unlink()  # as a run killed after its third epoch leaves its folder
    capsys.readouterr()
    assert run("report", str(out), "--data_dir", str(data_root)) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{out}: no metrics.json (the run did not finish); drawing its finished epochs from last.ckpt",
        f"Figures: {out / 'curves.png'}, {out / 'misclassified.png'}"]
    history = report.run_record(out)["history"]
    assert [e["epoch"] for e in history] == [1, 2, 3] and all("val_loss" in e for e in history)


def test_report_never_downloads(data_root: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    from torchvision import datasets

    out = tmp_path / "run"
    assert fit("dense512", data_root, out, "--trainer.max_epochs", "1") == 0
    empty = tmp_path / "nothing"
    empty.mkdir()
    monkeypatch.setattr(datasets.MNIST, "download", lambda *a, **k: pytest.fail("report went to the network"))
    capsys.readouterr()
    assert run("report", str(out), "--data_dir", str(empty)) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"misclassified.png not drawn: {empty / 'MNIST' / 'raw'}: no MNIST files; put ")
    assert " Test: loss: " in printed[1] and printed[2].startswith("per class: 0 ")
    assert printed[3:] == [f"Figures: {out / 'curves.png'}, {out / 'confusion_matrix.png'}"]


def test_worst_mistakes_are_wrong_and_most_confident_first():
    torch.manual_seed(0)
    net = TUTORIALS["dense512"]().net
    images = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (300,))
    idx, predicted, confidence = report.worst_mistakes(net, images, labels, k=10)
    assert len(idx) == 10 and bool((predicted != labels[idx]).all())
    assert confidence.tolist() == sorted(confidence.tolist(), reverse=True)


def test_an_image_grid_is_written_as_a_png_with_its_titles(tmp_path: Path):
    from PIL import Image

    images = torch.arange(5, dtype=torch.uint8).mul(50).view(5, 1, 1, 1).expand(5, 1, 28, 28)
    path = report.plot_images(images, [f"#{k}" for k in range(5)], tmp_path / "grid.png", wrong=[3], cols=3)
    assert path == tmp_path / "grid.png"
    with Image.open(path) as png:  # 3 columns, 2 rows of 1.3 x 1.5 inches at 80 dpi
        assert png.format == "PNG" and png.size == (round(3 * 1.3 * 80), round(2 * 1.5 * 80))


def test_figures_drawn_for_a_chinese_page_have_chinese_words(tmp_path: Path):
    # the zh tutorial pages draw their figures with lang="zh": titles, axes and legends in the glossary's words
    matrix = torch.eye(10, dtype=torch.long).mul(90).add(1).tolist()
    ax = report.plot_confusion(matrix, [str(i) for i in range(10)], tmp_path / "cm.png", accuracy=0.9, lang="zh").axes[0]
    assert ax.get_title() == "测试集上的混淆矩阵，准确率 90.00%" and ax.get_xlabel() == "预测类别"
    loss_ax, acc_ax = report.plot_curves([{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}], tmp_path / "c.png",
                                         lang="zh").axes
    assert (loss_ax.get_title(), acc_ax.get_ylabel(), loss_ax.get_xlabel()) == ("损失", "准确率", "轮（epoch）")
    assert [line.get_label() for line in loss_ax.lines] == ["训练集"]
    assert (tmp_path / "cm.png").stat().st_size > 0 and (tmp_path / "c.png").stat().st_size > 0


def test_chinese_words_are_drawn_in_a_font_that_has_them(tmp_path: Path):
    # lang="zh" finds the CJK font itself (.ci/run installs fonts-noto-cjk), even where matplotlib's font
    # cache was built before the font was installed: without it every Chinese character is an empty box
    if not any(Path(f).name.startswith(("NotoSansCJK", "wqy")) for f in font_manager.findSystemFonts()):
        pytest.skip("no CJK font installed (Debian: fonts-noto-cjk)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report.plot_curves([{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}], tmp_path / "c.png", lang="zh")
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert not missing, missing[0]
