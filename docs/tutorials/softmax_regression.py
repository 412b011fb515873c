# %% [markdown] lang="en"
# # softmax_regression: TF1's "MNIST for ML beginners", in Lightning
#
# [中文](zh/softmax_regression.md)
#
# The oldest of the five: softmax regression, `y = softmax(x W + b)` with `x` the 784 pixels, `W` a
# 784 x 10 matrix and `b` 10 biases, all starting at zero; plain gradient descent at a learning rate of
# 0.001 on the cross-entropy *summed* over each batch of 64, for 2000 steps (a little over two epochs).
# This page's own run prints its test accuracy in step 5, on the `Test:` line.
#
# TF1 had no Keras model: each step names the TF1 call it replaces, in the tutorial's order. The code is
# plain Lightning around mnist_lit's LightningModule, whose source is shown as it is. For a reader who
# knows Keras, where its calls went:
#
# | Keras | Lightning |
# | --- | --- |
# | `model.compile(optimizer, loss, metrics)` | methods of the LightningModule: `configure_optimizers` returns the optimizer; the loss and the metrics are computed in the step |
# | `model.fit(x, y, epochs, batch_size)` | `Trainer(max_steps=...).fit(model, datamodule=dm)`; the batch size is the DataModule's |
# | `History` | the logger: `metrics.csv` from a `CSVLogger` (or TensorBoard's files) |
# | `model.evaluate(x, y)` | `trainer.test(model, datamodule=dm)` |
# | `model.predict(x)` | `trainer.predict(model, datamodule=dm)` |
#
# This file is a jupytext `py:percent` script, plain Python that opens as a notebook (`make notebook`, see
# the README); `make docs` executes it and writes this page. `MNIST_LIT_TUTORIAL_EPOCHS=1` stops training
# after 1 epoch (938 of the 2000 steps; the tests set it); unset, the published recipe runs in full.

# %% [markdown] lang="zh"
# # softmax_regression：TF1 的 "MNIST for ML beginners"，用 Lightning 来写
#
# [English](../softmax_regression.md) · [术语对照](../../glossary.md)
#
# 这是五个教程里最早的一个：softmax 回归。softmax 是归一化指数函数，把一组分数变成概率。模型是
# `y = softmax(x W + b)`，其中 `x` 是 784 个像素，`W` 是 784 x 10 的矩阵，`b` 是 10 个偏置，初始值全为零。
# 训练用普通的梯度下降，学习率 0.001，损失是每个小批量（64 张图片）交叉熵的*总和*，共 2000 步，略多于两轮
# （epoch，即把整个训练集过一遍）。本页这次运行的测试准确率见第 5 步 `Test:` 那一行。
#
# TF1 还没有 Keras 模型，所以每一步说明的是它替代的 TF1 调用，顺序与原教程相同。训练逻辑在 mnist_lit 的
# LightningModule 里，页面上显示的就是它现在的源代码。熟悉 Keras 的读者可以对照下表：
#
# | Keras | Lightning |
# | --- | --- |
# | `model.compile(optimizer, loss, metrics)` | LightningModule 的方法：`configure_optimizers` 返回优化器，损失和指标在训练步里计算 |
# | `model.fit(x, y, epochs, batch_size)` | 训练器（Trainer）：`Trainer(max_steps=...).fit(model, datamodule=dm)`；批量大小由数据模块决定 |
# | `History` | 日志记录器：`CSVLogger` 写的 `metrics.csv`（或 TensorBoard 的日志） |
# | `model.evaluate(x, y)` | `trainer.test(model, datamodule=dm)` |
# | `model.predict(x)` | `trainer.predict(model, datamodule=dm)` |
#
# 代码与英文版共用一份，所以注释和输出是英文的；术语的译法见[术语对照](../../glossary.md)。源文件
# `softmax_regression.py` 是 jupytext 的 `py:percent` 脚本，也能当作 notebook 打开（`make notebook`，见
# README）；`make docs` 运行它并生成本页。设置 `MNIST_LIT_TUTORIAL_EPOCHS=1` 会在第 1 轮结束时停止训练（2000
# 步中的 938 步；测试就是这样做的）；不设置时按原教程完整训练。

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
import torch
from IPython.display import Image, Markdown, display
from lightning.pytorch.loggers import CSVLogger
from matplotlib.figure import Figure
from torchmetrics.functional import confusion_matrix

from mnist_lit import report
from mnist_lit.callbacks import EpochLine
from mnist_lit.data import MNISTDataModule
from mnist_lit.models.base import Tutorial
from mnist_lit.models.softmax_regression import SoftmaxRegression, SoftmaxRegressionNet

MAX_EPOCHS = os.environ.get("MNIST_LIT_TUTORIAL_EPOCHS")  # None: only the 2000 steps end the run
OUT = Path("checkpoints/tutorials/softmax_regression")  # logs and figures go here, under the working directory
OUT.mkdir(parents=True, exist_ok=True)
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available: False", no tips
warnings.filterwarnings("ignore", message=".*(LeafSpec|Total length of `list`)")  # nothing to act on here
report.chinese_fonts()  # a CJK font as fallback, for figures with Chinese text (Debian: fonts-noto-cjk)
L.seed_everything(0)  # the CLI's default seed, so this run shuffles as `fit --config softmax_regression` does


LANGS = ("en", "zh")  # a figure with words in it is drawn once per language; each page shows its own


def show(path, lang=None):  # a figure written to a file, shown in the notebook (`lang`: on that page only)
    display(Image(filename=str(path)), metadata={"lang": lang} if lang else None)


def show_source(*objects):  # mnist_lit's code as it is now: read when the notebook runs, never a copy
    display(Markdown("\n\n".join(f"```python\n{textwrap.dedent(inspect.getsource(o)).rstrip()}\n```"
                                 for o in objects)))


# %% [markdown] lang="en"
# ## 1. Load the data and look at it
#
# TF1: `input_data.read_data_sets("MNIST_data/", one_hot=True)`, which gave flat rows of 784 pixels in
# [0, 1] and one-hot labels, and `mnist.train.next_batch(64)`. Here a DataModule owns the data; the
# Trainer calls its methods itself during `fit`, and they are called by hand below only to look at a
# batch first:
#
# - `MNISTDataModule(batch_size=64)` records the settings and reads nothing yet;
# - `dm.prepare_data()` makes sure the files are on disk (the repo ships them in `data/MNIST/raw`; it
#   decompresses them there once), which Lightning calls once per machine;
# - `dm.setup("fit")` reads every split into memory once (later calls return at once), in every process;
# - `dm.train_dataloader()` serves them in shuffled batches, as `next_batch` did.
#
# Batches hold uint8 images, N x 1 x 28 x 28 (channels first, PyTorch's layout), divided by 255 once on
# the device. Labels stay class indices; the loss takes those, not one-hot rows. TF1 kept 5,000
# training images aside for validation; training here sees all 60,000, as
# `configs/softmax_regression.yaml` does.

# %% [markdown] lang="zh"
# ## 1. 读入数据，看一看
#
# TF1 用 `input_data.read_data_sets("MNIST_data/", one_hot=True)` 得到每行 784 个像素、取值在 [0, 1] 的
# 数组和独热编码的标签，再用 `mnist.train.next_batch(64)` 取小批量。这里数据归数据模块管，`fit` 时训练器会
# 自己调用它的方法；下面手工调用，只是为了先看一个批量：
#
# - `MNISTDataModule(batch_size=64)` 只记下设置，还不读文件；
# - `dm.prepare_data()` 保证数据文件在磁盘上（仓库自带 `data/MNIST/raw`，它在原地解压一次），Lightning 在
#   每台机器上只调用它一次；
# - `dm.setup("fit")` 把所有数据一次读进内存（之后再调用会立即返回），每个进程都会调用；
# - `dm.train_dataloader()` 按打乱的顺序给出小批量，和 `next_batch` 一样。
#
# 批量里是 uint8 图片，形状 N x 1 x 28 x 28（通道在前，PyTorch 的格式），送到设备上之后再除以 255。标签仍是
# 类别编号，损失函数直接接受，不需要独热编码。TF1 从训练图片中留出 5,000 张做验证集；这里和
# `configs/softmax_regression.yaml` 一样，60,000 张全部用来训练。

# %%
dm = MNISTDataModule(batch_size=64)
dm.prepare_data()
dm.setup("fit")
loader = dm.train_dataloader()
images, labels = next(iter(loader))  # one shuffled batch, as training will see it
print(f"{len(loader)} batches of {dm.hparams.batch_size}; one batch: {tuple(images.shape)} {images.dtype}")
show(report.plot_images(images[:16], [str(int(y)) for y in labels[:16]], OUT / "train_images.png"))

# %% [markdown] lang="en"
# ## 2. The model
#
# TF1: `W = tf.Variable(tf.zeros([784, 10]))`, `b = tf.Variable(tf.zeros([10]))` and
# `y = tf.nn.softmax(tf.matmul(x, W) + b)`.
#
# `SoftmaxRegressionNet` is `nn.Flatten`, then one `nn.Linear(784, 10)`; `SoftmaxRegression` is the
# LightningModule holding it as `model.net` with the tutorial's recipe, and starts it at zero. It
# returns the logits `x W + b`, the scores before the softmax, without the softmax: see the loss below.

# %% [markdown] lang="zh"
# ## 2. 模型
#
# TF1：`W = tf.Variable(tf.zeros([784, 10]))`、`b = tf.Variable(tf.zeros([10]))`，以及
# `y = tf.nn.softmax(tf.matmul(x, W) + b)`。
#
# `SoftmaxRegressionNet` 是 `nn.Flatten` 加一个 `nn.Linear(784, 10)`；`SoftmaxRegression` 是
# LightningModule，网络存放在它的 `model.net` 里，原教程的训练配方是它的默认参数，权重初始化为零。它输出
# logits（未经 softmax 的分数），即 `x W + b`，不做 softmax，原因见下面的损失函数。

# %%
show_source(SoftmaxRegressionNet, SoftmaxRegression)
model = SoftmaxRegression()
print(report.keras_summary(model.net, model.name))

# %% [markdown] lang="en"
# ## 3. The loss and the optimizer
#
# TF1: `cross_entropy = -tf.reduce_sum(y_ * tf.log(y))` and
# `tf.train.GradientDescentOptimizer(0.001).minimize(cross_entropy)`. (Keras, later, set these in
# `compile`, which compiles no code itself: it records the optimizer, the loss and the metrics for `fit` (its
# `jit_compile` option decides whether `fit` has XLA compile the step, which Keras 3 does by default where it
# can). mnist_lit compiles nothing: its step runs as the Python below.)
#
# In Lightning these are methods of the LightningModule, shared by the five tutorials. The training step,
# line by line:
#
# - `x, y = batch`: a batch of 64 from the DataModule, images divided by 255, and their class indices;
# - `logits = self(x)`: the forward pass, `x W + b`;
# - `loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)`: cross-entropy on the
#   logits, *summed* over the batch (`loss_reduction="sum"`): the same value as TF1's, but computed as a
#   log-softmax in one step, so it never takes the log of a probability rounded to zero (TF1's formula
#   turns that into NaN);
# - `per_sample = loss if self.hparams.loss_reduction == "mean" else loss / len(y)`: the metrics still
#   record the mean per image, like the other tutorials' losses;
# - `self.metrics[f"{stage}_acc"].update(logits.detach(), y)`: the epoch's accuracy adds this batch; the
#   logger records it once per epoch;
# - `return loss` in `training_step`: no backward, no optimizer call.
#
# Lightning's *automatic optimization* does the rest for each batch, as TF1's `minimize` did: the
# optimizer's `zero_grad()` sets every weight's gradient back to zero (torch in fact sets `.grad` to `None`;
# else this batch's gradients would
# add to the last one's), `loss.backward()` computes new ones, and the optimizer's `step()` updates the
# weights. (In *manual optimization*, `self.automatic_optimization = False`, the step makes those calls
# itself; mnist_lit does not use it.) What only changes the speed (the thread count, denormal numbers
# flushed to zero) stays outside the step, in the `SpeedDevices` callback (`mnist_lit/speed.py`).
#
# Summing rather than averaging makes each step 64 times larger than a mean would at the same learning
# rate. Plain SGD computes the same update in TF1 and torch; `configure_optimizers` returns `KerasSGD`,
# that same update. [dense512](dense512.md) walks through these methods at more length.

# %% [markdown] lang="zh"
# ## 3. 损失函数和优化器
#
# TF1：`cross_entropy = -tf.reduce_sum(y_ * tf.log(y))` 和
# `tf.train.GradientDescentOptimizer(0.001).minimize(cross_entropy)`。（后来的 Keras 把这些写在 `compile`
# 里。Keras 的 `compile` 本身并不编译代码，它只是记下 `fit` 要用的优化器、损失和指标（它的 `jit_compile` 选项决定 `fit` 是否让 XLA 编译训练步，Keras 3
# 在可行时默认这样做）。mnist_lit 不编译任何东西，
# 训练步就按下面的 Python 代码执行。）
#
# 在 Lightning 里，这些都是 LightningModule 的方法，五个教程共用。训练步逐行来看：
#
# - `x, y = batch`：数据模块给的一个 64 张图片的小批量，图片已除以 255，标签是类别编号；
# - `logits = self(x)`：前向传播，即 `x W + b`；
# - `loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)`：对 logits 计算交叉熵，并在
#   批量内求*和*（`loss_reduction="sum"`）。数值与 TF1 的相同，但用 log-softmax 一步算出，不会对一个舍入成
#   零的概率取对数（TF1 的写法遇到这种情况会得到 NaN）；
# - `per_sample = loss if self.hparams.loss_reduction == "mean" else loss / len(y)`：指标记录的仍是每张图片的
#   平均损失，与其他教程一致；
# - `self.metrics[f"{stage}_acc"].update(logits.detach(), y)`：把这个批量计入本轮的准确率，日志记录器每轮
#   记录一次；
# - `training_step` 里的 `return loss`：不做反向传播，也不调用优化器。
#
# 其余的事由 Lightning 的**自动优化**对每个批量完成，相当于 TF1 的 `minimize`：优化器的 `zero_grad()` 把每个
# 权重的梯度清零（torch 实际上是把 `.grad` 设成 `None`；否则这个批量的梯度会加到上一个批量的梯度上），`loss.backward()` 算出新的梯度，优化器的
# `step()` 更新权重。（如果用**手动优化**，即 `self.automatic_optimization = False`，这几步要在训练步里自己
# 调用；mnist_lit 不用。）只影响速度的手段（每轮选择线程数、把非规格化浮点数当作零）不在训练步里，而在
# `SpeedDevices` 回调（`mnist_lit/speed.py`）中。
#
# 求和而不是求平均，使得在同样的学习率下，每一步的更新是取平均时的 64 倍。普通 SGD 在 TF1 和 torch 中的
# 更新公式完全相同，`configure_optimizers` 返回的 `KerasSGD` 就是这个更新。[dense512](dense512.md) 一页对
# 这些方法讲得更详细。

# %%
show_source(Tutorial.step, Tutorial.training_step, Tutorial.configure_optimizers)
print(f"loss_reduction={model.hparams.loss_reduction!r}")
print(model.configure_optimizers())

# %% [markdown] lang="en"
# ## 4. Train it
#
# TF1: `for _ in range(2000): batch_xs, batch_ys = mnist.train.next_batch(64);
# sess.run(train_step, feed_dict={x: batch_xs, y_: batch_ys})`.
#
# The Lightning `Trainer` runs the loop, stopping after `max_steps=2000` optimizer steps (the epoch line
# counts the steps of each epoch; the last epoch is a partial one). The `CSVLogger` keeps each epoch's
# metrics; `EpochLine`, mnist_lit's progress callback, prints a line per epoch.

# %% [markdown] lang="zh"
# ## 4. 训练
#
# TF1：`for _ in range(2000): batch_xs, batch_ys = mnist.train.next_batch(64);
# sess.run(train_step, feed_dict={x: batch_xs, y_: batch_ys})`。
#
# 训练循环由训练器执行，优化器更新 `max_steps=2000` 步后停止（每轮的输出行显示这一轮走了多少步，最后一轮
# 不完整）。`CSVLogger` 记录每一轮的指标；mnist_lit 的进度回调 `EpochLine` 每轮打印一行。

# %%
logger = CSVLogger(OUT, name="logs")  # OUT/logs/version_0/metrics.csv, one row per epoch
trainer = L.Trainer(max_steps=2000, max_epochs=int(MAX_EPOCHS) if MAX_EPOCHS else None,
                    logger=logger, callbacks=[EpochLine()],
                    enable_checkpointing=False,  # TF1's loop wrote no files either
                    enable_model_summary=False)  # the summary was printed above, Keras' way
trainer.fit(model, datamodule=dm)

# %% [markdown] lang="en"
# ## 5. Evaluate it
#
# TF1: `correct_prediction = tf.equal(tf.argmax(y, 1), tf.argmax(y_, 1))`, its mean as `accuracy`, run on
# `mnist.test.images`. The loss printed is the mean per image (the sum over all 10,000, divided by
# 10,000), like the other tutorials' losses.

# %% [markdown] lang="zh"
# ## 5. 评估
#
# TF1：`correct_prediction = tf.equal(tf.argmax(y, 1), tf.argmax(y_, 1))`，取平均得到 `accuracy`，在
# `mnist.test.images` 上运行。这里打印的损失是每张图片的平均值（10,000 张的总和除以 10,000），与其他教程
# 一致。

# %%
results = trainer.test(model, datamodule=dm, verbose=False)[0]
print(f"Test: loss: {results['test_loss']:.4f} - acc: {results['test_acc']:.4f}")

# %%
history = report.logged_history(logger.log_dir)  # metrics.csv as Keras' history.history
for lang in LANGS:
    report.plot_curves(history, OUT / f"curves_{lang}.png", test=results, lang=lang)
    show(OUT / f"curves_{lang}.png", lang)

# %%
probs = torch.cat(trainer.predict(model, datamodule=dm))  # 10000 x 10
test_images, test_labels = dm.test_set()
predicted = probs.argmax(1)
matrix = confusion_matrix(predicted, test_labels, task="multiclass", num_classes=10)
for lang in LANGS:
    report.plot_confusion(matrix.tolist(), list(dm.classes), OUT / f"confusion_{lang}.png", results["test_acc"],
                          lang=lang)
    show(OUT / f"confusion_{lang}.png", lang)

# %% [markdown] lang="en"
# ## 6. What it learned
#
# Each class's column of `W` is a 28 x 28 template: a pixel's weight says how much ink there counts for
# (blue) or against (red) that digit. The tutorial drew these; here they come from `model.net[1].weight`
# (torch stores it as 10 x 784, the transpose of TF1's `W`).

# %% [markdown] lang="zh"
# ## 6. 模型学到了什么
#
# `W` 中每个类别对应的那一列，都可以看成一个 28 x 28 的模板。一个像素上的权重，表示那里有墨迹时对这个数字
# 是加分（蓝色）还是减分（红色）。原教程画过这些图；这里的数据来自 `model.net[1].weight`（torch 把它存成
# 10 x 784，是 TF1 中 `W` 的转置）。

# %%
weights = model.net[1].weight.detach().reshape(10, 28, 28)
limit = float(weights.abs().max())
fig = Figure(figsize=(12, 1.9), layout="constrained")
for digit, ax in enumerate(fig.subplots(1, 10)):
    ax.imshow(weights[digit], cmap="RdBu", vmin=-limit, vmax=limit)
    ax.set_title(str(digit))
    ax.axis("off")
fig.savefig(OUT / "weights.png", dpi=80)
show(OUT / "weights.png")

# %% [markdown] lang="en"
# Predictions on the first test images (TF1: `sess.run(y, feed_dict={x: ...})`). Each title reads
# predicted (true); red marks a mistake.

# %% [markdown] lang="zh"
# 下面是前 16 张测试图片的预测结果（TF1：`sess.run(y, feed_dict={x: ...})`）。标题先写预测的数字，括号里是
# 真实的数字；红色表示预测错了。

# %%
TRUE = {"en": "{} (true {})", "zh": "{}（实为 {}）"}  # predicted, true
wrong = [k for k in range(16) if predicted[k] != test_labels[k]]
for lang in LANGS:
    titles = [TRUE[lang].format(p, t) for p, t in zip(predicted.tolist(), test_labels.tolist())]
    show(report.plot_images(test_images[:16], titles, OUT / f"predictions_{lang}.png", wrong=wrong), lang)
