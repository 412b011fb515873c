# %% [markdown] lang="en"
# # softmax_regression: TF1's "MNIST for ML beginners", in Lightning
#
# [中文](zh/softmax_regression.md)
#
# The oldest of the five: softmax regression, `y = softmax(x W + b)` with `x` the 784 pixels, `W` a
# 784 x 10 matrix and `b` 10 biases, all starting at zero; plain gradient descent at a learning rate of
# 0.001 on the cross-entropy *summed* over each batch of 64, for 2000 steps (a little over two epochs).
# mnist_lit reaches a test accuracy of 0.9124 with seed 0 (the README's table); the `Test:` line below is
# this page's own run.
#
# TF1 had no Keras model: each step names the TF1 call it replaces, in the tutorial's order. The code is
# plain Lightning (`L.Trainer`, a `CSVLogger`) around mnist_lit's LightningModule, whose source is shown
# as it is. This file is a jupytext `py:percent` script: plain Python that opens as a notebook (`make
# notebook`, see the README). `make docs` executes it and writes this page with its outputs.
#
# `MNIST_LIT_TUTORIAL_EPOCHS=1` stops training after 1 epoch (938 of the 2000 steps; the tests set
# it); unset, the published recipe runs in full.

# %% [markdown] lang="zh"
# # softmax_regression：TF1 的 "MNIST for ML beginners"，用 Lightning 来写
#
# [English](../softmax_regression.md) · [术语对照](../../glossary.md)
#
# 五个教程里最早的一个：softmax 回归，`y = softmax(x W + b)`，其中 `x` 是 784 个像素，`W` 是 784 x 10 的
# 矩阵，`b` 是 10 个偏置，初始值全为零；用普通的梯度下降，学习率 0.001，损失是每个批量（64 张图片）交叉熵
# 的*总和*，训练 2000 步（两轮多一点）。mnist_lit 在随机种子 0 下的测试准确率是 0.9124（见 README 的表格），
# 下面 `Test:` 那一行是本页这次运行的结果。
#
# TF1 还没有 Keras 模型，所以每一步说明的是它替代的 TF1 调用，顺序与原教程相同。代码是普通的 Lightning
# 写法（`L.Trainer`、`CSVLogger`），训练逻辑在 mnist_lit 的 LightningModule 里，页面上直接显示它的源代码。
# 代码与英文版共用，所以注释和输出是英文的；术语见[术语对照](../../glossary.md)。源文件
# `softmax_regression.py` 是 jupytext 的 `py:percent` 脚本，也能当作 notebook 打开（`make notebook`，见
# README）；`make docs` 运行它并生成本页。
#
# 设置 `MNIST_LIT_TUTORIAL_EPOCHS=1` 会在第 1 轮结束时停止训练（2000 步中的 938 步；测试就是这样做的）；
# 不设置时按原教程完整训练。

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


def show(path):  # a figure written to a file, shown in the notebook
    display(Image(filename=str(path)))


def show_source(*objects):  # mnist_lit's code as it is now: read when the notebook runs, never a copy
    display(Markdown("\n\n".join(f"```python\n{textwrap.dedent(inspect.getsource(o)).rstrip()}\n```"
                                 for o in objects)))


# %% [markdown] lang="en"
# ## 1. Load the data and look at it
#
# TF1: `input_data.read_data_sets("MNIST_data/", one_hot=True)`, which gave flat rows of 784 pixels in
# [0, 1], one-hot labels, and `mnist.train.next_batch(64)`. `MNISTDataModule` finds the MNIST files the
# repo ships in `data/MNIST/raw` and serves shuffled batches of uint8 images, N x 1 x 28 x 28 (channels
# first, PyTorch's layout), divided by 255 once on the device. Labels stay class indices; the loss
# takes those, not one-hot rows. TF1 kept 5,000 training images aside for validation; training here
# sees all 60,000, as `configs/softmax_regression.yaml` does.

# %% [markdown] lang="zh"
# ## 1. 读入数据，看一看
#
# TF1：`input_data.read_data_sets("MNIST_data/", one_hot=True)`，得到每行 784 个像素、取值在 [0, 1] 的
# 数组和独热编码的标签，再用 `mnist.train.next_batch(64)` 取批量。`MNISTDataModule` 读取仓库自带的
# `data/MNIST/raw` 中的 MNIST 文件，给出打乱顺序的 uint8 图片批量，形状 N x 1 x 28 x 28（通道在前，PyTorch
# 的格式），送到设备上之后再除以 255。标签仍是类别编号，损失函数直接接受它，不需要独热编码。TF1 从训练
# 图片中留出 5,000 张做验证；这里和 `configs/softmax_regression.yaml` 一样，60,000 张全部用来训练。

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
# returns the logits `x W + b`, without the softmax: see the loss below.

# %% [markdown] lang="zh"
# ## 2. 模型
#
# TF1：`W = tf.Variable(tf.zeros([784, 10]))`、`b = tf.Variable(tf.zeros([10]))`，以及
# `y = tf.nn.softmax(tf.matmul(x, W) + b)`。
#
# `SoftmaxRegressionNet` 是 `nn.Flatten` 加一个 `nn.Linear(784, 10)`；`SoftmaxRegression` 是
# LightningModule，把它存为 `model.net`，带上原教程的训练配方，并把权重初始化为零。它输出 logits，即
# `x W + b`，不做 softmax，原因见下面的损失函数。

# %%
show_source(SoftmaxRegressionNet, SoftmaxRegression)
model = SoftmaxRegression()
print(report.keras_summary(model.net, model.name))

# %% [markdown] lang="en"
# ## 3. The loss and the optimizer
#
# TF1: `cross_entropy = -tf.reduce_sum(y_ * tf.log(y))` and
# `tf.train.GradientDescentOptimizer(0.001).minimize(cross_entropy)`.
#
# `step` computes cross-entropy on the logits, summed over the batch (`loss_reduction="sum"`):
# the same value as TF1's, but computed as a log-softmax in one step, so it never takes the log of a
# probability rounded to zero (TF1's formula turns that into NaN). Summing rather than averaging makes
# each step 64 times larger than a mean would at the same learning rate. Plain SGD computes the same
# update in TF1 and torch; `configure_optimizers` returns `KerasSGD`, that same update. The five tutorials share
# these methods ([dense512](dense512.md) walks through them):

# %% [markdown] lang="zh"
# ## 3. 损失函数和优化器
#
# TF1：`cross_entropy = -tf.reduce_sum(y_ * tf.log(y))` 和
# `tf.train.GradientDescentOptimizer(0.001).minimize(cross_entropy)`。
#
# `step` 对 logits 计算交叉熵，并在批量内求和（`loss_reduction="sum"`）：数值与 TF1 的相同，但用
# log-softmax 一步算出，所以不会对一个舍入成零的概率取对数（TF1 的写法遇到这种情况会得到 NaN）。求和而不是
# 求平均，使得在同样的学习率下，每一步的更新是取平均时的 64 倍。普通 SGD 在 TF1 和 torch 中的更新公式完全
# 相同；`configure_optimizers` 返回的 `KerasSGD` 就是这个更新。五个教程共用这些方法（[dense512](dense512.md)
# 一页有逐条说明）：

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
# 训练循环由 Lightning 的 `Trainer` 执行，优化器更新 `max_steps=2000` 步后停止（每轮的输出行显示这一轮
# 走了多少步；最后一轮不完整）。`CSVLogger` 记录每一轮的指标；mnist_lit 的进度回调 `EpochLine` 每轮打印
# 一行。

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
report.plot_curves(history, OUT / "curves.png", test=results)
show(OUT / "curves.png")

# %%
probs = torch.cat(trainer.predict(model, datamodule=dm))  # 10000 x 10
test_images, test_labels = dm.test_set()
predicted = probs.argmax(1)
matrix = confusion_matrix(predicted, test_labels, task="multiclass", num_classes=10)
report.plot_confusion(matrix.tolist(), list(dm.classes), OUT / "confusion.png", results["test_acc"])
show(OUT / "confusion.png")

# %% [markdown] lang="en"
# ## 6. What it learned
#
# Each class's column of `W` is a 28 x 28 template: a pixel's weight says how much ink there counts for
# (blue) or against (red) that digit. The tutorial drew these; here they come from `model.net[1].weight`
# (torch stores it as 10 x 784, the transpose of TF1's `W`).

# %% [markdown] lang="zh"
# ## 6. 模型学到了什么
#
# `W` 中每个类别对应的那一列，都可以看成一个 28 x 28 的模板：一个像素上的权重表示那里有墨迹时，对这个数字
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
# 前 16 张测试图片的预测结果（TF1：`sess.run(y, feed_dict={x: ...})`）。标题的格式是“预测 (true 真实)”，红色表示
# 预测错了。

# %%
show(report.plot_images(test_images[:16], [f"{p} (true {t})" for p, t in zip(predicted.tolist(), test_labels.tolist())],
                        OUT / "predictions.png", wrong=[k for k in range(16) if predicted[k] != test_labels[k]]))
