# %% [markdown] lang="en"
# # tiny_mlp: the TF2 tutorial, from training to a photo, in Lightning
#
# [中文](zh/tiny_mlp.md)
#
# The TF2 tutorial's small network: Dense layers of 16 and 16 ReLU units, Dropout 0.2, a Dense layer of
# 10 classes; Adam, 20 epochs of batches of 32, with the test set as validation data so that each
# epoch shows both loss curves. It then saves the model, loads it back and predicts a photo of a digit.
# This page's own run prints its test accuracy in step 5, on the `Test:` line.
#
# The steps follow the tutorial's order, and each names the Keras call it replaces. The code is plain
# Lightning and PyTorch (`torch.export`) around mnist_lit's LightningModule, whose source is shown as it
# is. Where Keras' calls went:
#
# | Keras | Lightning |
# | --- | --- |
# | `model.compile(optimizer, loss, metrics)` | methods of the LightningModule: `configure_optimizers` returns the optimizer; the loss and the metrics are computed in the step |
# | `model.fit(x, y, epochs, validation_data)` | `Trainer(max_epochs=...).fit(model, datamodule=dm)`; the batches and the validation data are the DataModule's |
# | `History` | the logger: `metrics.csv` from a `CSVLogger` (or TensorBoard's files) |
# | `model.evaluate(x, y)` | `trainer.test(model, datamodule=dm)` |
# | `model.predict(x)` | `trainer.predict(model, datamodule=dm)` |
# | `model.save`, `keras.models.load_model` | `trainer.save_checkpoint`, `TinyMLP.load_from_checkpoint` |
#
# This file is a jupytext `py:percent` script, plain Python that opens as a notebook (`make notebook`, see
# the README); `make docs` executes it and writes this page. `MNIST_LIT_TUTORIAL_EPOCHS=1` trains 1 epoch
# instead of 20 (the tests set it); unset, the published recipe runs in full.

# %% [markdown] lang="zh"
# # tiny_mlp：TF2 教程，从训练到识别一张照片，用 Lightning 来写
#
# [English](../tiny_mlp.md) · [术语对照](../../glossary.md)
#
# 这是 TF2 教程里的小网络：两个 16 单元、ReLU 激活的全连接层（Dense 层），一个比例为 0.2 的 Dropout 层
# （暂退法：训练时随机把一部分输出置零），再接一个输出 10 个类别的全连接层；优化器用 Adam，批量大小 32，
# 训练 20 轮（epoch，即把整个训练集过一遍）。原教程把测试集当作验证集，这样每一轮都能看到两条损失曲线。训练
# 之后保存模型、重新读入，再识别一张手写数字的照片。本页这次运行的测试准确率见第 5 步 `Test:` 那一行。
#
# 本页按原教程的顺序往下走，每一步先说它替代的是哪个 Keras 调用。训练逻辑在 mnist_lit 的 LightningModule
# 里，页面上显示的就是它现在的源代码。Keras 的几个调用在 Lightning 里分别对应：
#
# | Keras | Lightning |
# | --- | --- |
# | `model.compile(optimizer, loss, metrics)` | LightningModule 的方法：`configure_optimizers` 返回优化器，损失和指标在训练步里计算 |
# | `model.fit(x, y, epochs, validation_data)` | 训练器（Trainer）：`Trainer(max_epochs=...).fit(model, datamodule=dm)`；批量和验证集由数据模块给出 |
# | `History` | 日志记录器：`CSVLogger` 写的 `metrics.csv`（或 TensorBoard 的日志） |
# | `model.evaluate(x, y)` | `trainer.test(model, datamodule=dm)` |
# | `model.predict(x)` | `trainer.predict(model, datamodule=dm)` |
# | `model.save`、`keras.models.load_model` | `trainer.save_checkpoint`、`TinyMLP.load_from_checkpoint` |
#
# 代码与英文版共用一份，所以注释和输出是英文的；术语的译法见[术语对照](../../glossary.md)。源文件
# `tiny_mlp.py` 是 jupytext 的 `py:percent` 脚本，也能当作 notebook 打开（`make notebook`，见 README）；
# `make docs` 运行它并生成本页。设置 `MNIST_LIT_TUTORIAL_EPOCHS=1` 只训练 1 轮（测试就是这样做的）；不设置时
# 按原教程完整训练 20 轮。

# %%
import inspect
import logging
import os
import textwrap
import warnings
from pathlib import Path

# torch's waiting threads spin unless told otherwise, taking a core from whatever else runs beside the
# notebook; torch reads this once, when it starts (docs/benchmarks.md#threads-on-a-busy-machine)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import lightning as L  # noqa: E402
import numpy as np
import torch
from IPython.display import Image, Markdown, display
from lightning.pytorch.loggers import CSVLogger
from matplotlib.figure import Figure
from PIL import Image as PILImage
from torchmetrics.functional import confusion_matrix

import mnist_lit
from mnist_lit import classify, report
from mnist_lit.callbacks import EpochLine
from mnist_lit.data import MNISTDataModule
from mnist_lit.models.base import Tutorial
from mnist_lit.models.tiny_mlp import TinyMLP, TinyMLPNet

EPOCHS = min(20, int(os.environ.get("MNIST_LIT_TUTORIAL_EPOCHS", 20)))
OUT = Path("checkpoints/tutorials/tiny_mlp")  # logs, the saved model and figures go here, under the working directory
OUT.mkdir(parents=True, exist_ok=True)
PHOTO = Path(mnist_lit.__file__).resolve().parents[1] / "docs" / "tutorials" / "digit.png"  # ships in the repo
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available: False", no tips
warnings.filterwarnings("ignore", message=".*(LeafSpec|Total length of `list`)")  # nothing to act on here
report.chinese_fonts()  # a CJK font as fallback, for figures with Chinese text (Debian: fonts-noto-cjk)
L.seed_everything(0)  # the CLI's default seed, so this run starts where `fit --config tiny_mlp` does


LANGS = ("en", "zh")  # a figure with words in it is drawn once per language; each page shows its own


def show(path, lang=None):  # a figure written to a file, shown in the notebook (`lang`: on that page only)
    display(Image(filename=str(path)), metadata={"lang": lang} if lang else None)


def show_source(*objects):  # mnist_lit's code as it is now: read when the notebook runs, never a copy
    display(Markdown("\n\n".join(f"```python\n{textwrap.dedent(inspect.getsource(o)).rstrip()}\n```"
                                 for o in objects)))


# %% [markdown] lang="en"
# ## 1. Load the data and look at it
#
# Keras: `keras.datasets.mnist.load_data()`, then `x_train / 255.0`. Here a DataModule owns the data; the
# Trainer calls its methods itself during `fit`, and they are called by hand below only to look at a
# batch first:
#
# - `MNISTDataModule(batch_size=32, val="test")` records the settings and reads nothing yet; `val="test"`
#   makes the 10,000 test images the validation data, as the tutorial's
#   `validation_data=(x_test, y_test)` does;
# - `dm.prepare_data()` makes sure the files are on disk (the repo ships them in `data/MNIST/raw`; it
#   decompresses them there once), which Lightning calls once per machine;
# - `dm.setup("fit")` reads every split into memory once, in every process: the training images and the
#   test images, here also the validation set (later calls return at once);
# - `dm.train_dataloader()` serves the training images in batches, shuffled again each epoch; the Trainer
#   asks `dm.val_dataloader()` for the validation batches after each epoch.
#
# Batches hold uint8 images, N x 1 x 28 x 28 (channels first, PyTorch's layout; Keras' arrays are
# N x 28 x 28), divided by 255 once they are on the device.

# %% [markdown] lang="zh"
# ## 1. 读入数据，看一看
#
# Keras 先调用 `keras.datasets.mnist.load_data()`，再 `x_train / 255.0`。这里数据归数据模块管，`fit` 时
# 训练器会自己调用它的方法；下面手工调用，只是为了先看一个批量：
#
# - `MNISTDataModule(batch_size=32, val="test")` 只记下设置，还不读文件；`val="test"` 把 10,000 张测试图片
#   用作验证集，相当于原教程的 `validation_data=(x_test, y_test)`；
# - `dm.prepare_data()` 保证数据文件在磁盘上（仓库自带 `data/MNIST/raw`，它在原地解压一次），Lightning 在
#   每台机器上只调用它一次；
# - `dm.setup("fit")` 把所有数据一次读进内存，包括训练图片和这里用作验证集的测试图片（之后再调用会立即返回），每个进程都会调用；
# - `dm.train_dataloader()` 按批量给出训练图片，每轮重新打乱；每轮结束后，训练器再从 `dm.val_dataloader()`
#   取验证用的批量。
#
# 批量里是 uint8 图片，形状 N x 1 x 28 x 28（通道在前，PyTorch 的格式；Keras 的数组是 N x 28 x 28），送到
# 设备上之后再除以 255。

# %%
dm = MNISTDataModule(batch_size=32, val="test")
dm.prepare_data()
dm.setup("fit")
loader = dm.train_dataloader()
images, labels = next(iter(loader))  # one shuffled batch, as training will see it
print(f"{len(loader)} batches of {dm.hparams.batch_size}; one batch: {tuple(images.shape)} {images.dtype}")
show(report.plot_images(images[:16], [str(int(y)) for y in labels[:16]], OUT / "train_images.png"))

# %% [markdown] lang="en"
# ## 2. Build the network
#
# Keras: `keras.Sequential([layers.Flatten(input_shape=(28, 28)), layers.Dense(16, activation="relu"),
# layers.Dense(16, activation="relu"), layers.Dropout(0.2), layers.Dense(10, activation="softmax")])`
# and `model.summary()`.
#
# `TinyMLPNet` is that list of layers as a plain `nn.Sequential`; `TinyMLP` is the LightningModule
# holding it as `model.net` with the tutorial's recipe, and Keras' initial weights (glorot-uniform, zero
# biases). Its last layer returns logits, the scores before softmax turns them into probabilities: the
# loss is cross-entropy on logits, equal to softmax followed by cross-entropy but computed in one stable
# step. Dropout is active only while training, as in Keras (Lightning switches the module to `eval()` for
# validation, test and predict).

# %% [markdown] lang="zh"
# ## 2. 搭建网络
#
# Keras：`keras.Sequential([layers.Flatten(input_shape=(28, 28)), layers.Dense(16, activation="relu"),
# layers.Dense(16, activation="relu"), layers.Dropout(0.2), layers.Dense(10, activation="softmax")])`，
# 再 `model.summary()`。
#
# `TinyMLPNet` 就是这几层，写成普通的 `nn.Sequential`；`TinyMLP` 是 LightningModule，网络存放在它的
# `model.net` 里，原教程的训练配方是它的默认参数，权重初始化与 Keras 相同（glorot-uniform 权重、零偏置）。
# 最后一层不做 softmax（归一化指数函数，把分数变成概率），输出的是 logits，即未经 softmax 的分数。损失用
# 基于 logits 的交叉熵，数值上等于先做 softmax 再算交叉熵，但一步算完，更稳定。Dropout 只在训练时起作用，
# 和 Keras 一样（验证、测试和预测时，Lightning 会把模块切换到 `eval()` 模式）。

# %%
show_source(TinyMLPNet, TinyMLP)
model = TinyMLP()
print(report.keras_summary(model.net, model.name))

# %% [markdown] lang="en"
# ## 3. Compile it
#
# Keras: `model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])`.
# Keras' `compile` compiles no code itself: it records the optimizer, the loss and the metrics for `fit` (its
# `jit_compile` option decides whether `fit` has XLA compile the step, which Keras 3 does by default where it
# can). mnist_lit compiles nothing: its step runs as the Python below.
#
# In Lightning these are methods of the LightningModule, shared by the five tutorials. The training step,
# line by line:
#
# - `x, y = batch`: a batch from the DataModule, images divided by 255, and their class indices;
# - `logits = self(x)`: the forward pass, with Dropout on, since Lightning has put the module in training mode;
# - `loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)`: sparse categorical
#   cross-entropy on logits, the mean over the batch;
# - `self.metrics[f"{stage}_acc"].update(logits.detach(), y)`: the epoch's accuracy (and loss) add this
#   batch; the logger records them once per epoch, as `loss`/`acc` and, from `validation_step`'s same
#   `step`, `val_loss`/`val_acc`;
# - `return loss` in `training_step`: no backward, no optimizer call.
#
# Lightning's *automatic optimization* does the rest for each batch: the optimizer's `zero_grad()` sets
# every weight's gradient back to zero (torch in fact sets `.grad` to `None`; else this batch's gradients would
# add to the last one's),
# `loss.backward()` computes new ones, and the optimizer's `step()` updates the weights. (In *manual
# optimization*, `self.automatic_optimization = False`, the step makes those calls itself; mnist_lit
# does not use it.) What only changes the speed (the thread count, denormal numbers flushed to zero)
# stays outside the step, in the `SpeedDevices` callback (`mnist_lit/speed.py`).
#
# `configure_optimizers` builds `KerasAdam` (`mnist_lit/optim.py`). Keras and torch put Adam's eps (1e-7
# here) in different places relative to the bias correction; `KerasAdam` is torch's Adam with its eps
# rescaled before every step so that it computes Keras' update, which matters for weights with tiny
# gradients in the first steps. [dense512](dense512.md) walks through these methods at more length.

# %% [markdown] lang="zh"
# ## 3. 编译模型
#
# Keras：`model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])`。
# Keras 的 `compile` 本身并不编译代码，它只是记下 `fit` 要用的优化器、损失和指标（它的 `jit_compile` 选项决定 `fit` 是否让 XLA 编译训练步，Keras 3
# 在可行时默认这样做）。mnist_lit 不编译任何东西，
# 训练步就按下面的 Python 代码执行。
#
# 在 Lightning 里，这些都是 LightningModule 的方法，五个教程共用。训练步逐行来看：
#
# - `x, y = batch`：数据模块给的一个批量，图片已除以 255，标签是类别编号；
# - `logits = self(x)`：前向传播；Lightning 已把模块切换到训练模式，所以 Dropout 是开着的；
# - `loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)`：基于 logits 的稀疏分类交叉熵，
#   对批量取平均；
# - `self.metrics[f"{stage}_acc"].update(logits.detach(), y)`：把这个批量计入本轮的准确率（损失也一样），
#   日志记录器每轮记录一次；`validation_step` 调用的是同一个 `step`，记下的就是 `val_loss` 和 `val_acc`；
# - `training_step` 里的 `return loss`：不做反向传播，也不调用优化器。
#
# 其余的事由 Lightning 的**自动优化**对每个批量完成：优化器的 `zero_grad()` 把每个权重的梯度清零（torch 实际上是把 `.grad` 设成 `None`；否则这个
# 批量的梯度会加到上一个批量的梯度上），`loss.backward()` 算出新的梯度，优化器的 `step()` 更新权重。（如果
# 用**手动优化**，即 `self.automatic_optimization = False`，这几步要在训练步里自己调用；mnist_lit 不用。）
# 只影响速度的手段（每轮选择线程数、把非规格化浮点数当作零）不在训练步里，而在 `SpeedDevices` 回调
# （`mnist_lit/speed.py`）中。
#
# `configure_optimizers` 创建 `KerasAdam`（`mnist_lit/optim.py`）。Adam 的 eps（这里是 1e-7）相对于偏差修正
# 的位置，Keras 和 torch 不一样；`KerasAdam` 就是 torch 的 Adam，只是每步之前把 eps 换算一下，使它算出的更新
# 与 Keras 相同。对最初几步里梯度很小的权重，这一点有影响。[dense512](dense512.md) 一页对这些方法讲得更详细。

# %%
show_source(Tutorial.step, Tutorial.training_step, Tutorial.configure_optimizers)
print(model.configure_optimizers())

# %% [markdown] lang="en"
# ## 4. Fit it, with the test set as validation data
#
# Keras: `history = model.fit(x_train, y_train, epochs=20, validation_data=(x_test, y_test))`, with
# Keras' default batch of 32. The Lightning `Trainer` runs the loop and validates after each epoch
# (`validation_step`); the `CSVLogger` keeps the metrics as `history.history` does, and `EpochLine`,
# mnist_lit's progress callback, prints Keras' line.

# %% [markdown] lang="zh"
# ## 4. 训练，用测试集做验证集
#
# Keras：`history = model.fit(x_train, y_train, epochs=20, validation_data=(x_test, y_test))`，批量大小用
# Keras 的默认值 32。训练循环由训练器执行，每轮结束后做一次验证（`validation_step`）；`CSVLogger` 像
# `history.history` 那样记录指标，mnist_lit 的进度回调 `EpochLine` 每轮打印一行 Keras 风格的输出。

# %%
logger = CSVLogger(OUT, name="logs")  # OUT/logs/version_0/metrics.csv: a validation row and a training row per epoch
trainer = L.Trainer(max_epochs=EPOCHS, logger=logger, callbacks=[EpochLine()],
                    enable_checkpointing=False,  # Keras' fit writes no checkpoint either
                    enable_model_summary=False)  # the summary was printed above, Keras' way
trainer.fit(model, datamodule=dm)

# %% [markdown] lang="en"
# ## 5. Evaluate it
#
# Keras: `model.evaluate(x_test, y_test)`. It is the last epoch's validation, measured again.

# %% [markdown] lang="zh"
# ## 5. 评估
#
# Keras：`model.evaluate(x_test, y_test)`。结果就是最后一轮的验证结果，只是重新算了一遍。

# %%
results = trainer.test(model, datamodule=dm, verbose=False)[0]
print(f"Test: loss: {results['test_loss']:.4f} - acc: {results['test_acc']:.4f}")

# %% [markdown] lang="en"
# ## 6. Plot the curves
#
# Keras: `plt.plot(history.history["loss"])` and `history.history["val_loss"]`; here the same lists
# come from the logger's `metrics.csv`. Training loss is the mean over an epoch's batches with Dropout
# on; validation loss is measured after the epoch, Dropout off, which is why it can sit below the
# training curve.

# %% [markdown] lang="zh"
# ## 6. 画出训练曲线
#
# Keras 用 `plt.plot(history.history["loss"])` 和 `history.history["val_loss"]` 画图；这里同样的数据来自
# 日志记录器的 `metrics.csv`。训练损失是一轮中各个批量的平均值，计算时 Dropout 开着；验证损失在一轮结束后
# 计算，Dropout 关着，所以验证曲线可能比训练曲线还低。

# %%
history = report.logged_history(logger.log_dir)  # metrics.csv as Keras' history.history
for lang in LANGS:
    report.plot_curves(history, OUT / f"curves_{lang}.png", test=results, lang=lang)
    show(OUT / f"curves_{lang}.png", lang)

# %% [markdown] lang="en"
# Keras: `model.predict(x_test)`. `trainer.predict` runs the module's `predict_step` (the network, then
# softmax). Where the test errors fall: true class in rows, predicted class in columns; then the first
# 16 test images, each title predicted (true), red for a mistake.

# %% [markdown] lang="zh"
# Keras 的预测是 `model.predict(x_test)`。`trainer.predict` 运行模块的 `predict_step`（先过网络，再做
# softmax）。混淆矩阵显示测试错误出在哪里，行是真实类别，列是预测类别。再下面是前 16 张测试图片，标题先写
# 预测的数字，括号里是真实的数字，红色表示预测错了。

# %%
probs = torch.cat(trainer.predict(model, datamodule=dm))  # 10000 x 10
test_images, test_labels = dm.test_set()
predicted = probs.argmax(1)
matrix = confusion_matrix(predicted, test_labels, task="multiclass", num_classes=10)
TRUE = {"en": "{} (true {})", "zh": "{}（实为 {}）"}  # predicted, true
wrong = [k for k in range(16) if predicted[k] != test_labels[k]]
for lang in LANGS:
    report.plot_confusion(matrix.tolist(), list(dm.classes), OUT / f"confusion_{lang}.png", results["test_acc"],
                          lang=lang)
    show(OUT / f"confusion_{lang}.png", lang)
    titles = [TRUE[lang].format(p, t) for p, t in zip(predicted.tolist(), test_labels.tolist())]
    show(report.plot_images(test_images[:16], titles, OUT / f"predictions_{lang}.png", wrong=wrong), lang)

# %% [markdown] lang="en"
# ## 7. Save it and load it back
#
# Keras: `model.save("model.keras")` and `keras.models.load_model("model.keras")`.
#
# `trainer.save_checkpoint` writes the weights with the module's hyperparameters (here without the
# optimizer's state, `weights_only=True`), and `TinyMLP.load_from_checkpoint` builds the module again
# from them. To use the network without Lightning or mnist_lit, `torch.export` saves it as a program
# (`.pt2`), here with the softmax appended so that it returns probabilities, as Keras' model does; any
# batch size is allowed. (`python -m mnist_lit export` does the same from a checkpoint and also stores
# the class names in the file.) The reloaded model must answer as the trained one does:

# %% [markdown] lang="zh"
# ## 7. 保存，再读回来
#
# Keras：`model.save("model.keras")` 和 `keras.models.load_model("model.keras")`。
#
# `trainer.save_checkpoint` 把权重连同模块的超参数一起写入检查点（这里不保存优化器状态，
# `weights_only=True`），`TinyMLP.load_from_checkpoint` 再用它们重新构建模块。如果想在没有 Lightning 和
# mnist_lit 的地方使用这个网络，可以用 `torch.export` 把它导出为一个程序（`.pt2`）；这里在网络后面加上了
# softmax，让它像 Keras 的模型一样输出概率，批量大小不限。（`python -m mnist_lit export` 从检查点做同样的
# 导出，并把类别名也存进文件。）最后检查一下，读回来的模型和训练好的模型给出的答案应当完全相同。

# %%
trainer.save_checkpoint(OUT / "model.ckpt", weights_only=True)
reloaded = TinyMLP.load_from_checkpoint(OUT / "model.ckpt")
with_softmax = torch.nn.Sequential(reloaded.net, torch.nn.Softmax(dim=1)).eval()
x = test_images[:1000].float() / 255
program = torch.export.export(with_softmax, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
torch.export.save(program, OUT / "model.pt2")
predict = torch.export.load(OUT / "model.pt2").module()  # needs torch only
with torch.no_grad():
    same = torch.allclose(predict(x), probs[:1000], atol=1e-6)
print(f"{reloaded.name}, {sum(p.numel() for p in reloaded.net.parameters()):,} parameters; same predictions: {same}")

# %% [markdown] lang="en"
# ## 8. Predict a photo
#
# The tutorial ends on a photo of a handwritten digit. No camera is at hand here, so `digit.png`
# (beside this file) is a stand-in: MNIST test image 18, drawn as dark ink on light paper, off-centre,
# with uneven light and paper grain, by `tests/photos.py`'s `write_photos`, once, from the repo root:
#
# ```
# PYTHONPATH=. python -c "
# from pathlib import Path; import shutil, tempfile
# from mnist_lit.data import load_split; from tests.photos import write_photos
# x, y = load_split('data', 'test')
# [(p, _)] = write_photos(x[18:19], y[18:19], Path(tempfile.mkdtemp()), 1, seed=233)
# shutil.copy(p, 'docs/tutorials/digit.png')"
# ```
#
# The network never trained on that digit (it is a test image). The tutorial's way in is to resize the
# photo to 28 x 28 and divide by 255. But MNIST digits are light ink on black, scaled to fit 20 x 20 and
# centred by their centre of mass; `classify.frame` (what `python -m mnist_lit classify` does to a photo)
# does that: it inverts the photo when the paper is the lighter, crops to the ink, scales, centres. Both
# go to the reloaded model, with two controls: a blank sheet of the same paper, resized, and test image
# 18 itself, the MNIST digit the photo was made from.

# %% [markdown] lang="zh"
# ## 8. 识别一张照片
#
# 原教程最后识别一张手写数字的照片。这里手边没有相机，就用 `digit.png`（与本页源文件在同一目录）代替。
# 它是 MNIST 的第 18 张测试图片，由 `tests/photos.py` 的 `write_photos` 画成浅色纸上的深色字迹，位置不居中，
# 光照不均，还有纸张纹理。在仓库根目录运行一次下面的命令就能重新生成它：
#
# ```
# PYTHONPATH=. python -c "
# from pathlib import Path; import shutil, tempfile
# from mnist_lit.data import load_split; from tests.photos import write_photos
# x, y = load_split('data', 'test')
# [(p, _)] = write_photos(x[18:19], y[18:19], Path(tempfile.mkdtemp()), 1, seed=233)
# shutil.copy(p, 'docs/tutorials/digit.png')"
# ```
#
# 网络没有在这个数字上训练过（它是测试图片）。原教程的做法是把照片缩放到 28 x 28 再除以 255。可是 MNIST
# 的数字是黑底上的浅色字迹，缩放到 20 x 20 以内，并按重心居中。`classify.frame`（也就是
# `python -m mnist_lit classify` 对照片做的处理）就按这个规矩来：纸比字迹亮时先反色，再裁到字迹所在的区域，
# 缩放，居中。两种输入都交给读回来的模型，另外加两个对照：同一张纸的空白部分（同样缩放），以及照片所仿的
# 第 18 张测试图片本身。

# %%
photo = PILImage.open(PHOTO)
gray = np.asarray(photo.convert("L").resize((28, 28)), dtype=np.float32) / 255
inputs = {  # each 1 x 28 x 28 in [0, 1]
    "photo, resized": torch.from_numpy(gray)[None],  # the tutorial's recipe: dark ink on light paper
    "blank paper, resized": torch.full((1, 28, 28), float(np.median(gray))),  # the same paper, no digit
    "photo, framed": classify.frame({"dataset": "mnist"}, PHOTO),  # MNIST's framing: light ink on black, centred
    "test image 18": test_images[18].float() / 255,  # the digit the photo was made from
}
with torch.no_grad():
    for title, image in inputs.items():
        p = predict(image[None])[0]
        print(f"{title}: {int(p.argmax())} ({float(p.max()):.3f})")

# %%
TITLES = {"en": {"photo": "digit.png, {} x {}"},  # the inputs' keys above are the English titles
          "zh": {"photo": "digit.png，{} x {}", "photo, resized": "照片，直接缩放", "photo, framed": "照片，按 MNIST 方式处理",
                 "test image 18": "第 18 张测试图片"}}
for lang in LANGS:
    fig = Figure(figsize=(10, 2.6), layout="constrained")
    axes = fig.subplots(1, 4)
    axes[0].imshow(photo, cmap="gray")
    axes[0].set_title(TITLES[lang]["photo"].format(photo.width, photo.height))
    for ax, title in zip(axes[1:], ("photo, resized", "photo, framed", "test image 18")):
        ax.imshow(inputs[title][0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(TITLES[lang].get(title, title))
    for ax in axes:
        ax.axis("off")
    fig.savefig(OUT / f"photo_{lang}.png", dpi=80)
    show(OUT / f"photo_{lang}.png", lang)

# %% [markdown] lang="en"
# What the answers above say. The resized photo is grey paper with dark ink, unlike anything in MNIST,
# and the network gives it the answer it gives the blank sheet, at about the same probability: whatever
# it says, the photo's digit played no part in it. The framed photo gets the answer of test image 18
# itself, at a similar probability: framing handed the network the digit MNIST holds, and what it makes
# of it is this 13,002-parameter network's reading of that test image, right or wrong.
# (`tests/test_e2e.py` makes the same comparison on 200 such photos, with two epochs of the cnn: framed,
# it requires at least 95% right; resized, at most 25%.)

# %% [markdown] lang="zh"
# 直接缩放的照片是灰色纸上的深色字迹，和 MNIST 里的任何图片都不像。网络给它的答案和给空白纸的一样，概率
# 也差不多，可见不管答案是什么，都与照片上的数字无关。按 MNIST 方式处理过的照片，得到的答案和第 18 张测试
# 图片本身一样，概率也相近。处理之后，网络看到的就是 MNIST 里的那个数字；至于认得对不对，取决于这个只有
# 13,002 个参数的小网络怎么看那张测试图片。（`tests/test_e2e.py` 在 200 张这样的照片上做同样的比较，用的是
# 训练两轮的 cnn，要求处理后至少认对 95%，直接缩放的最多认对 25%。）
