# %% [markdown] lang="en"
# # tiny_mlp: the TF2 tutorial, from training to a photo, in Lightning
#
# [中文](zh/tiny_mlp.md)
#
# The TF2 tutorial's small network: Dense layers of 16 and 16 ReLU units, Dropout 0.2, a Dense layer of
# 10 classes; Adam, 20 epochs of batches of 32, with the test set as validation data so that each
# epoch shows both loss curves. It then saves the model, loads it back and predicts a photo of a digit.
# mnist_lit reaches a test accuracy of 0.9543 with seed 0 (the README's table); the `Test:` line below
# is this page's own run.
#
# The steps follow the tutorial's order, and each names the Keras call it replaces. The code is plain
# Lightning (`L.Trainer`, a `CSVLogger`, `save_checkpoint` / `load_from_checkpoint`) and PyTorch
# (`torch.export`) around mnist_lit's LightningModule, whose source is shown as it is. This file is a
# jupytext `py:percent` script: plain Python that opens as a notebook (`make notebook`, see the README).
# `make docs` executes it and writes this page with its outputs.
#
# `MNIST_LIT_TUTORIAL_EPOCHS=1` trains 1 epoch instead of 20 (the tests set it); unset, the published
# recipe runs in full.

# %% [markdown] lang="zh"
# # tiny_mlp：TF2 教程，从训练到识别一张照片，用 Lightning 来写
#
# [English](../tiny_mlp.md) · [术语对照](../../glossary.md)
#
# TF2 教程里的小网络：两个 16 单元、ReLU 激活的 Dense 层，Dropout 0.2，再接一个输出 10 个类别的 Dense 层；优化器
# 用 Adam，批量大小 32，训练 20 轮，并把测试集当作验证数据，这样每一轮都能看到两条损失曲线。之后保存模型、
# 重新读入，再识别一张手写数字的照片。mnist_lit 在随机种子 0 下的测试准确率是 0.9543（见 README 的表格），
# 下面 `Test:` 那一行是本页这次运行的结果。
#
# 本页按原教程的顺序一步一步来，每一步都说明它替代的是哪个 Keras 调用。代码是普通的 Lightning 写法
# （`L.Trainer`、`CSVLogger`、`save_checkpoint` / `load_from_checkpoint`）和 PyTorch 写法（`torch.export`），
# 训练逻辑在 mnist_lit 的 LightningModule 里，页面上直接显示它的源代码。代码与英文版共用，所以注释和输出
# 是英文的；术语见[术语对照](../../glossary.md)。源文件 `tiny_mlp.py` 是 jupytext 的 `py:percent` 脚本，
# 也能当作 notebook 打开（`make notebook`，见 README）；`make docs` 运行它并生成本页。
#
# 设置 `MNIST_LIT_TUTORIAL_EPOCHS=1` 只训练 1 轮而不是 20 轮（测试就是这样做的）；不设置时按原教程完整训练。

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


def show(path):  # a figure written to a file, shown in the notebook
    display(Image(filename=str(path)))


def show_source(*objects):  # mnist_lit's code as it is now: read when the notebook runs, never a copy
    display(Markdown("\n\n".join(f"```python\n{textwrap.dedent(inspect.getsource(o)).rstrip()}\n```"
                                 for o in objects)))


# %% [markdown] lang="en"
# ## 1. Load the data and look at it
#
# Keras: `keras.datasets.mnist.load_data()`, then `x_train / 255.0`. `MNISTDataModule` finds the MNIST
# files the repo ships in `data/MNIST/raw` and serves batches of uint8 images, N x 1 x 28 x 28
# (channels first, PyTorch's layout; Keras' arrays are N x 28 x 28), and it divides each batch by 255
# once it is on the device. `val="test"` makes the 10,000 test images the validation data, as the
# tutorial's `validation_data=(x_test, y_test)` does.

# %% [markdown] lang="zh"
# ## 1. 读入数据，看一看
#
# Keras：`keras.datasets.mnist.load_data()`，再 `x_train / 255.0`。`MNISTDataModule` 读取仓库自带的
# `data/MNIST/raw` 中的 MNIST 文件，给出 uint8 图片的批量，形状 N x 1 x 28 x 28（通道在前，PyTorch 的格式；
# Keras 的数组是 N x 28 x 28），送到设备上之后再除以 255。`val="test"` 把 10,000 张测试图片用作验证数据，
# 相当于原教程的 `validation_data=(x_test, y_test)`。

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
# biases). Its last layer returns logits: the loss is cross-entropy on logits, equal to softmax followed
# by cross-entropy but computed in one stable step. Dropout is active only while training, as in Keras
# (Lightning switches the module to `eval()` for validation, test and predict).

# %% [markdown] lang="zh"
# ## 2. 搭建网络
#
# Keras：`keras.Sequential([layers.Flatten(input_shape=(28, 28)), layers.Dense(16, activation="relu"),
# layers.Dense(16, activation="relu"), layers.Dropout(0.2), layers.Dense(10, activation="softmax")])`，
# 再 `model.summary()`。
#
# `TinyMLPNet` 就是这几层，写成普通的 `nn.Sequential`；`TinyMLP` 是 LightningModule，把它存为
# `model.net`，带上原教程的训练配方，权重初始化与 Keras 相同（glorot-uniform 权重、零偏置）。最后一层输出
# logits：损失是基于 logits 的交叉熵，数值上等于 softmax 加交叉熵，但一步算完，更稳定。Dropout 只在训练时
# 起作用，和 Keras 一样（验证、测试和预测时，Lightning 会把模块切换到 `eval()` 模式）。

# %%
show_source(TinyMLPNet, TinyMLP)
model = TinyMLP()
print(report.keras_summary(model.net, model.name))

# %% [markdown] lang="en"
# ## 3. Compile it
#
# Keras: `model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])`.
#
# The LightningModule holds what `compile` configures: `step` computes the loss and the metrics
# (torchmetrics), `training_step` returns the loss and Lightning runs the backward pass, the optimizer's
# update and `zero_grad` around it, and `configure_optimizers` builds `KerasAdam` (`mnist_lit/optim.py`). Keras and torch put
# Adam's eps (1e-7 here) in different places relative to the bias correction; `KerasAdam` is torch's
# Adam with its eps rescaled before every step so that it computes Keras' update, which matters for
# weights with tiny gradients in the first steps. The five tutorials share these methods
# ([dense512](dense512.md) walks through them):

# %% [markdown] lang="zh"
# ## 3. 编译模型
#
# Keras：`model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])`。
#
# `compile` 配置的东西都在 LightningModule 里：`training_step` 计算损失并更新权重，`configure_optimizers`
# 创建 `KerasAdam`（`mnist_lit/optim.py`）。Adam 的 eps（这里是 1e-7）相对于偏差修正的位置，Keras 和 torch
# 不一样；`KerasAdam` 就是 torch 的 Adam，只是每步之前把 eps 换算一下，使它算出的更新与 Keras 相同。对于
# 最初几步里梯度很小的权重，这一点有影响。五个教程共用这些方法（[dense512](dense512.md) 一页有逐条说明）：

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
# ## 4. 训练，用测试集做验证
#
# Keras：`history = model.fit(x_train, y_train, epochs=20, validation_data=(x_test, y_test))`，批量大小用
# Keras 的默认值 32。训练循环由 Lightning 的 `Trainer` 执行，每轮结束后做一次验证（`validation_step`）；
# `CSVLogger` 像 `history.history` 那样记录指标，mnist_lit 的进度回调 `EpochLine` 打印 Keras 风格的一行。

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
# Keras：`plt.plot(history.history["loss"])` 和 `history.history["val_loss"]`；这里同样的数据来自日志记录器
# 的 `metrics.csv`。训练损失是一轮中各个批量的平均值，计算时 Dropout 开着；验证损失在一轮结束后计算，
# Dropout 关着，所以验证曲线可能比训练曲线还低。

# %%
history = report.logged_history(logger.log_dir)  # metrics.csv as Keras' history.history
report.plot_curves(history, OUT / "curves.png", test=results)
show(OUT / "curves.png")

# %% [markdown] lang="en"
# Keras: `model.predict(x_test)`. `trainer.predict` runs the module's `predict_step` (the network, then
# softmax). Where the test errors fall: true class in rows, predicted class in columns; then the first
# 16 test images, each title predicted (true), red for a mistake.

# %% [markdown] lang="zh"
# Keras：`model.predict(x_test)`。`trainer.predict` 运行模块的 `predict_step`（网络，再加 softmax）。
# 混淆矩阵显示测试错误出在哪里：行是真实类别，列是预测类别；然后是前 16 张测试图片，标题的格式是“预测 (true 真实)”，
# 红色表示预测错了。

# %%
probs = torch.cat(trainer.predict(model, datamodule=dm))  # 10000 x 10
test_images, test_labels = dm.test_set()
predicted = probs.argmax(1)
matrix = confusion_matrix(predicted, test_labels, task="multiclass", num_classes=10)
report.plot_confusion(matrix.tolist(), list(dm.classes), OUT / "confusion.png", results["test_acc"])
show(OUT / "confusion.png")
show(report.plot_images(test_images[:16], [f"{p} (true {t})" for p, t in zip(predicted.tolist(), test_labels.tolist())],
                        OUT / "predictions.png", wrong=[k for k in range(16) if predicted[k] != test_labels[k]]))

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
# 导出，并把类别名也存进文件。）读回来的模型必须和训练好的模型给出相同的答案：

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
# from pathlib import Path; import shutil
# from mnist_lit.data import load_split; from tests.photos import write_photos
# x, y = load_split('data', 'test')
# [(p, _)] = write_photos(x[18:19], y[18:19], Path('/tmp/photo'), 1, seed=233)
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
# 原教程最后识别一张手写数字的照片。这里手边没有相机，所以用 `digit.png`（与本页源文件在同一目录）代替：
# 它是 MNIST 的第 18 张测试图片，由 `tests/photos.py` 的 `write_photos` 画成浅色纸上的深色字迹，位置不居中，
# 光照不均，还有纸张纹理；在仓库根目录运行一次下面的命令即可生成：
#
# ```
# PYTHONPATH=. python -c "
# from pathlib import Path; import shutil
# from mnist_lit.data import load_split; from tests.photos import write_photos
# x, y = load_split('data', 'test')
# [(p, _)] = write_photos(x[18:19], y[18:19], Path('/tmp/photo'), 1, seed=233)
# shutil.copy(p, 'docs/tutorials/digit.png')"
# ```
#
# 网络没有在这个数字上训练过（它是测试图片）。原教程的做法是把照片缩放到 28 x 28 再除以 255。但 MNIST 的
# 数字是黑底上的浅色字迹，缩放到 20 x 20 以内，并按重心居中；`classify.frame`（也就是
# `python -m mnist_lit classify` 对照片做的处理）正是这样做的：纸比字迹亮时先反色，裁到字迹，缩放，再居中。
# 两种输入都交给读回来的模型，另外加两个对照：同一张纸的空白部分（同样缩放），以及第 18 张测试图片本身，
# 也就是照片所仿的那个 MNIST 数字。

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
ZH = {"photo, resized": "照片，直接缩放", "photo, framed": "照片，按 MNIST 方式处理", "test image 18": "第 18 张测试图片"}
fig = Figure(figsize=(10, 3), layout="constrained")
axes = fig.subplots(1, 4)
axes[0].imshow(photo, cmap="gray")
axes[0].set_title(f"digit.png, {photo.width} x {photo.height}\n照片原图")
for ax, title in zip(axes[1:], ZH):
    ax.imshow(inputs[title][0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{title}\n{ZH[title]}")
for ax in axes:
    ax.axis("off")
fig.savefig(OUT / "photo.png", dpi=80)
show(OUT / "photo.png")

# %% [markdown] lang="en"
# What the answers above say. The resized photo is grey paper with dark ink, unlike anything in MNIST,
# and the network gives it the answer it gives the blank sheet, at about the same probability: whatever
# it says, the photo's digit played no part in it. The framed photo gets the answer of test image 18
# itself, at a similar probability: framing handed the network the digit MNIST holds, and what it makes
# of it is this 13,002-parameter network's reading of that test image, right or wrong.
# (`tests/test_e2e.py` makes the same comparison on 200 such photos, with two epochs of the cnn: framed,
# it requires at least 95% right; resized, at most 25%.)

# %% [markdown] lang="zh"
# 上面的答案说明了什么：直接缩放的照片是灰色纸上的深色字迹，和 MNIST 里的任何图片都不像，网络给它的答案
# 和给空白纸的一样，概率也差不多：不管答案是什么，都与照片上的数字无关。按 MNIST 方式处理后的照片，得到的
# 答案和第 18 张测试图片本身一样，概率也相近：处理之后，网络看到的就是 MNIST 里的那个数字，至于认得对不对，
# 取决于这个只有 13,002 个参数的小网络对那张测试图片的判断。
# （`tests/test_e2e.py` 在 200 张这样的照片上做同样的比较，用训练两轮的 cnn：处理后至少要认对 95%；直接
# 缩放的最多认对 25%。）
