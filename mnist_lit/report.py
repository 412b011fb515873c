"""What a person looks at after training: a Keras-style summary, curves, confusion matrix, worst mistakes.

`python -m mnist_lit report checkpoints/<tutorial>` (re)draws the figures from what the run logged
(metrics.json, and model.ckpt for the misclassified grid; for an interrupted run, last.ckpt), headless
and offline.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_lit import atomic
from mnist_lit.errors import UserError
from mnist_lit.model_files import Probabilities, checkpoint_model, read_checkpoint


# ---------------------------------------------------------------- model.summary()


def keras_summary(net: nn.Module, name: str, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> str:
    """Layer, output shape and parameters of each leaf layer, with Keras' totals."""
    rows: list[tuple[str, str, int]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: rows.append(
        (type(m).__name__, str((None, *o.shape[1:])), sum(p.numel() for p in m.parameters(recurse=False)))))
        for m in net.modules() if not list(m.children())]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(input_shape, device=next(net.parameters()).device))
    finally:
        net.train(was_training)
        for h in hooks:
            h.remove()
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    width = (28, 22, 10)
    rule = "-" * sum(width)
    lines = [f'Model: "{name}"', rule,
             f"{'Layer (type)':<{width[0]}}{'Output Shape':<{width[1]}}{'Param #':>{width[2]}}", rule]
    lines += [f"{kind:<{width[0]}}{shape:<{width[1]}}{params:>{width[2]},}" for kind, shape, params in rows]
    lines += [rule, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
              f"Non-trainable params: {total - trainable:,}", rule]
    return "\n".join(lines)


# ---------------------------------------------------------------- figures

# fonts with Chinese glyphs, in order of preference (Debian: fonts-noto-cjk, fonts-wqy-microhei)
CJK_FONTS = ("Noto Sans CJK SC", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Source Han Sans SC", "Microsoft YaHei",
             "PingFang SC", "SimHei")
# the words of the figures below, in each language the tutorial pages are written in (docs/tutorials/, zh/);
# the Chinese follows docs/glossary.md
WORDS = {
    "en": {"training": "training", "validation": "validation", "test": "test after training ({:.4f})",
           "epoch": "epoch", "loss": "cross-entropy loss", "acc": "accuracy", "Loss": "Loss", "Accuracy": "Accuracy",
           "predicted": "predicted class", "true": "true class (per-class accuracy)",
           "confusion": "Confusion matrix on the test set", "confusion_acc": "{}: accuracy {:.2%}",
           "share": "share of the true class",
           "mistakes": "Most confident mistakes on the test set (true \u2192 predicted, probability)",
           "no_mistakes": "No mistakes on the test set"},
    "zh": {"training": "训练集", "validation": "验证集", "test": "训练后的测试结果（{:.4f}）",
           "epoch": "轮（epoch）", "loss": "交叉熵损失", "acc": "准确率", "Loss": "损失", "Accuracy": "准确率",
           "predicted": "预测类别", "true": "真实类别（各类准确率）",
           "confusion": "测试集上的混淆矩阵", "confusion_acc": "{}，准确率 {:.2%}",
           "share": "占该真实类别的比例",
           "mistakes": "测试集上最有把握的错误（真实 \u2192 预测，概率）",
           "no_mistakes": "测试集上没有错误"},
}


def chinese_fonts() -> str | None:
    """Let figures mix Chinese with Latin text: the first installed font of CJK_FONTS becomes matplotlib's
    fallback after DejaVu Sans, glyph by glyph. Returns its name; None when none is installed (Chinese
    characters would then be drawn as empty boxes)."""
    from matplotlib import font_manager, rcParams

    installed = {f.name for f in font_manager.fontManager.ttflist}
    if not installed.intersection(CJK_FONTS):  # matplotlib's font cache may predate the font's install
        for path in font_manager.findSystemFonts():
            if "CJK" in path or "wqy" in path:
                font_manager.fontManager.addfont(path)
        installed = {f.name for f in font_manager.fontManager.ttflist}
    cjk = next((name for name in CJK_FONTS if name in installed), None)
    if cjk is not None:
        rcParams["font.family"] = ["DejaVu Sans", cjk]
    return cjk


def figure_words(lang: str) -> dict[str, str]:
    """The figures' words in `lang`; for Chinese, with a CJK font to draw them (else they come out as boxes)."""
    if lang != "en":
        chinese_fonts()
    return WORDS[lang]


def per_class_accuracy(matrix: torch.Tensor | list[list[int]]) -> list[float]:
    """Each true class's share of right answers (recall), from a confusion matrix whose rows are true classes."""
    cm = torch.as_tensor(matrix, dtype=torch.float64)
    return (cm.diag() / cm.sum(1).clamp(min=1)).tolist()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: files only
    import matplotlib.pyplot as plt

    return plt


def logged_history(log_dir: str | Path) -> list[dict[str, float]]:
    """A CSVLogger's metrics.csv as Keras' `history`: one dict per epoch (epochs counted from 1, as Keras
    prints them), the test row left out. Lightning's own CSVLogger writes an epoch's validation and training
    metrics as two rows (the CLI's EpochCSVLogger, one): rows of the same epoch are joined."""
    epochs: dict[int, dict[str, float]] = {}
    with open(Path(log_dir) / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("test_acc"):
                epochs.setdefault(int(row["epoch"]) + 1, {}).update({k: float(v) for k, v in row.items() if v})
    return [{**metrics, "epoch": epoch} for epoch, metrics in sorted(epochs.items())]


def plot_curves(history: list[dict[str, Any]], path: Path, test: dict[str, float] | None = None,
                lang: str = "en"):
    """Loss and accuracy per epoch, training against validation, in one figure; the final test
    loss and accuracy (`test`: test_loss, test_acc) as dashed reference lines. `lang`: a key of WORDS."""
    words = figure_words(lang)
    plt = _pyplot()
    epochs = [e["epoch"] for e in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric in zip(axes, ("loss", "acc")):
        for stage, style in (("train", "o-"), ("val", "s--")):
            key = f"{stage}_{metric}"
            if any(key in e for e in history):
                xs = [e["epoch"] for e in history if key in e]
                ax.plot(xs, [e[key] for e in history if key in e], style,
                        label=words["training" if stage == "train" else "validation"])
        if test and f"test_{metric}" in test:
            value = test[f"test_{metric}"]
            ax.axhline(value, color="gray", linestyle=":", label=words["test"].format(value))
        ax.set_xlabel(words["epoch"])
        ax.set_ylabel(words[metric])
        ax.set_title(words["Loss" if metric == "loss" else "Accuracy"])
        ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: math.ceil(len(epochs) / 20)])
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)
    return fig


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path, accuracy: float | None = None,
                   lang: str = "en"):
    """Counts of true class (rows) against predicted class (columns), per-class recall on the left.
    `lang`: a key of WORDS."""
    words = figure_words(lang)
    plt = _pyplot()
    cm = torch.tensor(matrix, dtype=torch.float64)
    recall = per_class_accuracy(cm)
    fig, ax = plt.subplots(figsize=(8.5, 7.5), constrained_layout=True)
    image = ax.imshow((cm / cm.sum(1, keepdim=True).clamp(min=1)).numpy(), cmap="Blues", vmin=0, vmax=1)
    n = len(classes)
    for i in range(n):
        for j in range(n):
            count = int(cm[i, j])
            if count:
                share = count / max(cm[i].sum().item(), 1)
                ax.text(j, i, f"{count}", ha="center", va="center", fontsize=8,
                        color="white" if share > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=45 if max(map(len, classes)) > 2 else 0, ha="right")
    ax.set_yticks(range(n), [f"{c} ({r:.1%})" for c, r in zip(classes, recall)])
    ax.set_xlabel(words["predicted"])
    ax.set_ylabel(words["true"])
    title = words["confusion"]
    ax.set_title(words["confusion_acc"].format(title, accuracy) if accuracy is not None else title)
    fig.colorbar(image, ax=ax, label=words["share"])
    _save(fig, path)
    return fig


def plot_misclassified(images: torch.Tensor, true: list[str], predicted: list[str], probs: list[float], path: Path,
                       lang: str = "en"):
    """A grid of test images the model got wrong, most confident first: `true -> predicted (p)`.
    `lang`: a key of WORDS."""
    plt = _pyplot()
    n = len(images)
    cols = min(6, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.4 * rows), constrained_layout=True, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k].squeeze(0).numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{true[k]} \u2192 {predicted[k]}\n({probs[k]:.1%})", fontsize=9)
    fig.suptitle(figure_words(lang)["mistakes" if n else "no_mistakes"])
    _save(fig, path)
    return fig


def plot_images(images: torch.Tensor, titles: list[str], path: Path, wrong=(), cols: int = 8,
                size: tuple[float, float] = (1.3, 1.5), fontsize: int = 9) -> Path:
    """uint8 images (N x 1 x 28 x 28) in a grid, each under its title, in red for the indices in `wrong`;
    written to `path`, which is returned. Drawn on a matplotlib `Figure` of its own, not through pyplot,
    so a notebook's own pyplot figures are left as they are."""
    from matplotlib.figure import Figure

    rows = max(1, math.ceil(len(images) / cols))
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    for k, ax in enumerate(fig.subplots(rows, cols, squeeze=False).flat):
        ax.axis("off")
        if k < len(images):
            ax.imshow(images[k, 0], cmap="gray", vmin=0, vmax=255)
            ax.set_title(titles[k], fontsize=fontsize, color="red" if k in wrong else "black")
    atomic.write_bytes_from(path, lambda f: fig.savefig(f, format="png", dpi=80))
    return Path(path)


def _save(fig, path: Path) -> None:
    atomic.write_bytes_from(path, lambda f: fig.savefig(f, format="png", dpi=110))
    _pyplot().close(fig)


# ---------------------------------------------------------------- mistakes


@torch.no_grad()
def predict_probs(net: nn.Module, images: torch.Tensor, batch: int = 2000) -> torch.Tensor:
    """Class probabilities of uint8 images (N x 1 x 28 x 28), as Keras' `predict` on images / 255."""
    model = Probabilities(net).eval()
    return torch.cat([model(images[i:i + batch].float() / 255) for i in range(0, len(images), batch)])


def worst_mistakes(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, k: int = 24):
    """Indices, predictions and probabilities of the k most confidently wrong images."""
    probs = predict_probs(net, images)
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:k]
    return order, predicted[order], confidence[order]


def run_record(folder: Path) -> dict[str, Any]:
    """What a run logged: metrics.json when it finished; for one that was interrupted, the per-epoch
    history kept inside last.ckpt (curves only: it was never tested)."""
    metrics_path, last = folder / "metrics.json", folder / "last.ckpt"
    if metrics_path.is_file():
        try:
            return json.loads(metrics_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{metrics_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if last.is_file():
        checkpoint = read_checkpoint(last)
        history = checkpoint.get("callbacks", {}).get("RunRecorder", {}).get("history")
        if history:
            return {"history": history, "per_class_acc": dict.fromkeys(checkpoint["mnist_lit"]["classes"])}
    raise UserError(f"{folder}: no metrics.json or last.ckpt to report on (train with fit, or point at "
                    "checkpoints/<tutorial>)")


def write_report(folder: Path, model: nn.Module | None = None, images: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None) -> list[Path]:
    """Draw every figure the logged files allow; returns the paths written."""
    metrics = run_record(folder)
    classes = list(metrics.get("per_class_acc") or [str(d) for d in range(10)])
    written = []
    if metrics.get("history"):
        plot_curves(metrics["history"], folder / "curves.png", metrics)
        written.append(folder / "curves.png")
    if metrics.get("confusion_matrix"):
        plot_confusion(metrics["confusion_matrix"], classes, folder / "confusion_matrix.png", metrics.get("test_acc"))
        written.append(folder / "confusion_matrix.png")
    if model is not None and images is not None and labels is not None:
        idx, predicted, confidence = worst_mistakes(model, images, labels)
        plot_misclassified(images[idx].cpu(), [classes[int(labels[i])] for i in idx],
                           [classes[int(p)] for p in predicted], confidence.tolist(), folder / "misclassified.png")
        written.append(folder / "misclassified.png")
    return written


def summary(metrics: dict[str, Any]) -> list[str]:
    """A run's test result as Keras' `evaluate` prints it, with its per-class accuracy."""
    if "test_acc" not in metrics:
        return []
    head = (f"{metrics.get('tutorial', '?')} on {metrics.get('dataset', '?')}: {metrics.get('epochs', '?')} epochs, "
            f"{metrics.get('steps', '?')} steps; Test: loss: {metrics['test_loss']:.4f} - acc: {metrics['test_acc']:.4f}"
            f" ({metrics.get('test_samples', '?')} images)")
    classes = metrics.get("per_class_acc") or {}
    return [head, "per class: " + ", ".join(f"{name} {acc:.4f}" for name, acc in classes.items())] if classes else [head]


def main(argv: list[str]) -> int:
    """`python -m mnist_lit report RUN`: the test result of a run and its figures (curves, confusion matrix,
    worst mistakes), from its output folder or a checkpoint in it."""
    parser = argparse.ArgumentParser(prog="python -m mnist_lit report", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("run", type=Path, help="a run's output folder, e.g. checkpoints/cnn, or a .ckpt in it")
    parser.add_argument("--data_dir", default="data", help="the data folder, as fit's --data.data_dir")
    args = parser.parse_args(argv)
    from mnist_lit.data import load_split  # Lightning with it: not needed for --help

    folder, model = (args.run.parent, args.run) if args.run.is_file() else (args.run, None)
    if not folder.is_dir():
        raise UserError(f"{args.run}: no such folder or checkpoint")
    net = images = labels = None
    model = model or next((folder / name for name in ("model.ckpt", "last.ckpt") if (folder / name).is_file()), None)
    if model is not None:  # the tested model, or for an interrupted run its last finished epoch
        net, meta = checkpoint_model(model)
        try:  # the files at hand only: report never downloads
            images, labels = load_split(args.data_dir, "test", meta["dataset"])
        except UserError as e:
            print(f"misclassified.png not drawn: {e}")
    if not (folder / "metrics.json").is_file() and (folder / "last.ckpt").is_file():
        print(f"{folder}: no metrics.json (the run did not finish); drawing its finished epochs from last.ckpt")
    for line in summary(run_record(folder)):
        print(line)
    written = write_report(folder, net, images, labels)
    print("Figures: " + (", ".join(map(str, written)) if written else "none (nothing logged to draw)"))
    return 0
