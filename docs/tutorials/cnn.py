# %% [markdown] lang="en"
# # cnn: the Keras convolutional network, in Lightning
#
# [中文](zh/cnn.md)
#
# The Keras CNN tutorial: three blocks of a 3 x 3 convolution with ReLU and a 2 x 2 max-pool (32, 64
# and 64 filters), then Dense layers of 64, 500 and 10; RMSprop, 10 epochs of batches of 128. The
# tutorial reports 98.68% test accuracy; this page's own run prints its result in step 5, on the `Test:`
# line.
#
# The steps follow the tutorial's order, and each names the Keras call it replaces. The code is plain
# Lightning around mnist_lit's LightningModule, whose source is shown as it is. Where Keras' calls went:
#
# | Keras | Lightning |
# | --- | --- |
# | `model.compile(optimizer, loss, metrics)` | methods of the LightningModule: `configure_optimizers` returns the optimizer; the loss and the metrics are computed in the step |
# | `model.fit(x, y, epochs, batch_size)` | `Trainer(max_epochs=...).fit(model, datamodule=dm)`; the batch size is the DataModule's |
# | `History` | the logger: `metrics.csv` from a `CSVLogger` (or TensorBoard's files) |
# | `model.evaluate(x, y)` | `trainer.test(model, datamodule=dm)` |
# | `model.predict(x)` | `trainer.predict(model, datamodule=dm)` |
#
# This file is a jupytext `py:percent` script, plain Python that opens as a notebook (`make notebook`, see
# the README); `make docs` executes it and writes this page. `MNIST_LIT_TUTORIAL_EPOCHS=1` trains 1 epoch
# instead of 10 (the tests set it); unset, the published recipe runs in full.

# %% [markdown] lang="zh"
# # cnn：Keras 的卷积神经网络，用 Lightning 来写
#
# [English](../cnn.md) · [术语对照](../../glossary.md)
#
# 这是 Keras 的 CNN 教程。网络由三组“3 x 3 卷积 + ReLU + 2 x 2 最大汇聚层（max pooling）”组成（卷积核个数依次为 32、64、
# 64），后面接 64、500、10 个单元的全连接层（Dense 层）；优化器用 RMSprop，批量大小 128，训练 10 轮（epoch，
# 即把整个训练集过一遍）。原教程的测试准确率是 98.68%，本页这次运行的结果见第 5 步 `Test:` 那一行。
#
# 本页按原教程的顺序往下走，每一步先说它替代的是哪个 Keras 调用。训练逻辑在 mnist_lit 的 LightningModule
# 里，页面上显示的就是它现在的源代码。Keras 的几个调用在 Lightning 里分别对应：
#
# | Keras | Lightning |
# | --- | --- |
# | `model.compile(optimizer, loss, metrics)` | LightningModule 的方法：`configure_optimizers` 返回优化器，损失和指标在训练步里计算 |
# | `model.fit(x, y, epochs, batch_size)` | 训练器（Trainer）：`Trainer(max_epochs=...).fit(model, datamodule=dm)`；批量大小由数据模块决定 |
# | `History` | 日志记录器：`CSVLogger` 写的 `metrics.csv`（或 TensorBoard 的日志） |
# | `model.evaluate(x, y)` | `trainer.test(model, datamodule=dm)` |
# | `model.predict(x)` | `trainer.predict(model, datamodule=dm)` |
#
# 代码与英文版共用一份，所以注释和输出是英文的；术语的译法见[术语对照](../../glossary.md)。源文件 `cnn.py`
# 是 jupytext 的 `py:percent` 脚本，也能当作 notebook 打开（`make notebook`，见 README）；`make docs` 运行它
# 并生成本页。设置 `MNIST_LIT_TUTORIAL_EPOCHS=1` 只训练 1 轮（测试就是这样做的）；不设置时按原教程完整训练
# 10 轮。

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
from torchmetrics.functional import confusion_matrix

from mnist_lit import report
from mnist_lit.callbacks import EpochLine
from mnist_lit.data import MNISTDataModule
from mnist_lit.models.base import Tutorial
from mnist_lit.models.cnn import CNN, CNNNet

EPOCHS = min(10, int(os.environ.get("MNIST_LIT_TUTORIAL_EPOCHS", 10)))
OUT = Path("checkpoints/tutorials/cnn")  # logs and figures go here, under the working directory
OUT.mkdir(parents=True, exist_ok=True)
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available: False", no tips
warnings.filterwarnings("ignore", message=".*(LeafSpec|Total length of `list`)")  # nothing to act on here
report.chinese_fonts()  # a CJK font as fallback, for figures with Chinese text (Debian: fonts-noto-cjk)
L.seed_everything(0)  # the CLI's default seed, so this run starts where `fit --config cnn` does


LANGS = ("en", "zh")  # a figure with words in it is drawn once per language; each page shows its own


def show(path, lang=None):  # a figure written to a file, shown in the notebook (`lang`: on that page only)
    display(Image(filename=str(path)), metadata={"lang": lang} if lang else None)


def show_source(*objects):  # mnist_lit's code as it is now: read when the notebook runs, never a copy
    display(Markdown("\n\n".join(f"```python\n{textwrap.dedent(inspect.getsource(o)).rstrip()}\n```"
                                 for o in objects)))


# %% [markdown] lang="en"
# ## 1. Load the data and look at it
#
# Keras: `keras.datasets.mnist.load_data()`, then `reshape((60000, 28, 28, 1))` to give the convolutions
# a channel axis. Here a DataModule owns the data; the Trainer calls its methods itself during `fit`, and
# they are called by hand below only to look at a batch first:
#
# - `MNISTDataModule(batch_size=128)` records the settings and reads nothing yet;
# - `dm.prepare_data()` makes sure the files are on disk (the repo ships them in `data/MNIST/raw`; it
#   decompresses them there once), which Lightning calls once per machine;
# - `dm.setup("fit")` reads every split into memory once (later calls return at once), in every process;
# - `dm.train_dataloader()` serves them in batches, shuffled again each epoch.
#
# The batches already have a channel axis: N x 1 x 28 x 28, channels first, as PyTorch's `Conv2d` takes
# them (Keras puts the channel last, N x 28 x 28 x 1). Labels stay class indices 0-9, which the loss
# takes as they are: no `to_categorical`.

# %% [markdown] lang="zh"
# ## 1. 读入数据，看一看
#
# Keras 先调用 `keras.datasets.mnist.load_data()`，再 `reshape((60000, 28, 28, 1))`，给卷积层加上通道这一维。
# 这里数据归数据模块管，`fit` 时训练器会自己调用它的方法；下面手工调用，只是为了先看一个批量：
#
# - `MNISTDataModule(batch_size=128)` 只记下设置，还不读文件；
# - `dm.prepare_data()` 保证数据文件在磁盘上（仓库自带 `data/MNIST/raw`，它在原地解压一次），Lightning 在
#   每台机器上只调用它一次；
# - `dm.setup("fit")` 把所有数据一次读进内存（之后再调用会立即返回），每个进程都会调用；
# - `dm.train_dataloader()` 按批量给出这些图片，每轮重新打乱。
#
# 批量已经带有通道维，形状是 N x 1 x 28 x 28，通道在前，正是 PyTorch 的 `Conv2d` 要求的格式（Keras 把通道
# 放在最后，N x 28 x 28 x 1）。标签仍是 0-9 的类别编号，损失函数直接接受，不必用 `to_categorical` 转成独热编码。

# %%
dm = MNISTDataModule(batch_size=128)  # the batch size Keras passes to model.fit
dm.prepare_data()
dm.setup("fit")
loader = dm.train_dataloader()
images, labels = next(iter(loader))  # one shuffled batch, as training will see it
print(f"{len(loader)} batches of {dm.hparams.batch_size}; one batch: {tuple(images.shape)} {images.dtype}")
show(report.plot_images(images[:16], [str(int(y)) for y in labels[:16]], OUT / "train_images.png"))

# %% [markdown] lang="en"
# ## 2. Build the network
#
# Keras: `layers.Conv2D(32, (3, 3), activation="relu")`, `layers.MaxPooling2D((2, 2))` and so on,
# `layers.Flatten()`, `layers.Dense(64, activation="relu")`, `layers.Dense(500, activation="relu")`,
# `layers.Dense(10, activation="softmax")`; then `model.summary()`.
#
# `CNNNet` is that list of layers as a plain `nn.Sequential`, in Keras' order. Keras' `Conv2D` with its
# `activation` is two layers here, `nn.Conv2d` and `nn.ReLU`; `nn.Conv2d` is told its input channels
# (1, then 32, then 64), which Keras infers. `CNN` is the LightningModule that holds the network as
# `model.net` with the tutorial's recipe. Weights start as Keras' do (glorot-uniform, zero biases), so
# the parameter count matches Keras' summary. The last layer returns logits, the scores before softmax
# turns them into probabilities: the loss is cross-entropy on logits, the same value as softmax followed
# by categorical cross-entropy, computed in one stable step.

# %% [markdown] lang="zh"
# ## 2. 搭建网络
#
# Keras：`layers.Conv2D(32, (3, 3), activation="relu")`、`layers.MaxPooling2D((2, 2))` 等，接着
# `layers.Flatten()`、`layers.Dense(64, activation="relu")`、`layers.Dense(500, activation="relu")`、
# `layers.Dense(10, activation="softmax")`，最后 `model.summary()`。
#
# `CNNNet` 就是这一串层，写成普通的 `nn.Sequential`，顺序与 Keras 相同。Keras 里带 `activation` 参数的
# `Conv2D`，在这里拆成 `nn.Conv2d` 和 `nn.ReLU` 两层；`nn.Conv2d` 要写明输入通道数（1、32、64），Keras 则会
# 自动推断。`CNN` 是 LightningModule，网络存放在它的 `model.net` 里，原教程的训练配方是它的默认参数。权重
# 初始化与 Keras 相同（glorot-uniform 权重、零偏置），所以参数个数与 Keras 的模型摘要一致。最后一层不做
# softmax（归一化指数函数，把分数变成概率），输出的是 logits，即未经 softmax 的分数。损失用基于 logits 的
# 交叉熵，数值上等于先做 softmax 再算分类交叉熵，但一步算完，更稳定。

# %%
show_source(CNNNet, CNN)
model = CNN()
print(report.keras_summary(model.net, model.name))

# %% [markdown] lang="en"
# ## 3. Compile it
#
# Keras: `model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])`.
# Keras' `compile` compiles no code itself: it records the optimizer, the loss and the metrics for `fit` (its
# `jit_compile` option decides whether `fit` has XLA compile the step, which Keras 3 does by default where it
# can). mnist_lit compiles nothing: its step runs as the Python below.
#
# In Lightning these are methods of the LightningModule, shared by the five tutorials. The training step,
# line by line:
#
# - `x, y = batch`: a batch from the DataModule, images divided by 255, and their class indices;
# - `logits = self(x)`: the forward pass through the convolutions and Dense layers;
# - `loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)`: cross-entropy on logits,
#   the mean over the batch;
# - `self.metrics[f"{stage}_acc"].update(logits.detach(), y)`: the epoch's accuracy (and loss) add this
#   batch; the logger records them once per epoch;
# - `return loss` in `training_step`: no backward, no optimizer call.
#
# Lightning's *automatic optimization* does the rest for each batch: the optimizer's `zero_grad()` sets
# every weight's gradient back to zero (torch in fact sets `.grad` to `None`; else this batch's gradients would
# add to the last one's),
# `loss.backward()` computes new ones, and the optimizer's `step()` updates the weights. (In *manual
# optimization*, `self.automatic_optimization = False`, the step makes those calls itself; mnist_lit
# does not use it.) What only changes the speed stays outside the step, in the `SpeedDevices` callback
# (`mnist_lit/speed.py`): the thread count, chosen each epoch; this network's convolution weights kept
# channels-last on the CPU; denormal numbers flushed to zero.
#
# `configure_optimizers` builds the optimizer, `KerasRMSprop` (`mnist_lit/optim.py`), which adds eps
# inside the square root as Keras does, `w -= lr * g / sqrt(v + eps)`; `torch.optim.RMSprop` adds it
# outside, `sqrt(v) + eps`, and its weights drift away from Keras' within a few steps.
# [dense512](dense512.md) walks through these methods at more length.

# %% [markdown] lang="zh"
# ## 3. 编译模型
#
# Keras：`model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])`。
# Keras 的 `compile` 本身并不编译代码，它只是记下 `fit` 要用的优化器、损失和指标（它的 `jit_compile` 选项决定 `fit` 是否让 XLA 编译训练步，Keras 3
# 在可行时默认这样做）。mnist_lit 不编译任何东西，
# 训练步就按下面的 Python 代码执行。
#
# 在 Lightning 里，这些都是 LightningModule 的方法，五个教程共用。训练步逐行来看：
#
# - `x, y = batch`：数据模块给的一个批量，图片已除以 255，标签是类别编号；
# - `logits = self(x)`：前向传播，依次经过卷积层和全连接层；
# - `loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)`：基于 logits 的交叉熵，对批量取平均；
# - `self.metrics[f"{stage}_acc"].update(logits.detach(), y)`：把这个批量计入本轮的准确率（损失也一样），
#   日志记录器每轮记录一次；
# - `training_step` 里的 `return loss`：不做反向传播，也不调用优化器。
#
# 其余的事由 Lightning 的**自动优化**对每个批量完成：优化器的 `zero_grad()` 把每个权重的梯度清零（torch 实际上是把 `.grad` 设成 `None`；否则这个
# 批量的梯度会加到上一个批量的梯度上），`loss.backward()` 算出新的梯度，优化器的 `step()` 更新权重。（如果
# 用**手动优化**，即 `self.automatic_optimization = False`，这几步要在训练步里自己调用；mnist_lit 不用。）
# 只影响速度的手段都不在训练步里，而在 `SpeedDevices` 回调（`mnist_lit/speed.py`）中：每轮选择线程数，在
# CPU 上让这个网络的卷积权重采用通道在后的内存布局，把非规格化浮点数当作零。
#
# `configure_optimizers` 创建优化器 `KerasRMSprop`（`mnist_lit/optim.py`）。它和 Keras 一样把 eps 加在平方根
# 里面，`w -= lr * g / sqrt(v + eps)`；`torch.optim.RMSprop` 加在外面，`sqrt(v) + eps`，几步之后权重就和
# Keras 的不一样了。[dense512](dense512.md) 一页对这些方法讲得更详细。

# %%
show_source(Tutorial.step, Tutorial.training_step, Tutorial.configure_optimizers)
print(model.configure_optimizers())

# %% [markdown] lang="en"
# ## 4. Fit it
#
# Keras: `model.fit(train_images, train_labels, epochs=10, batch_size=128)`, the images divided by 255
# beforehand.
#
# The Lightning `Trainer` runs the loop. The DataModule divides each batch by 255 on the device
# (`on_after_batch_transfer`), with no mean or standard deviation, as the tutorial does. The
# `CSVLogger` keeps each epoch's metrics (Keras' `History`); `EpochLine`, mnist_lit's progress callback,
# prints Keras' line per epoch.

# %% [markdown] lang="zh"
# ## 4. 训练
#
# Keras：先把图片除以 255，再 `model.fit(train_images, train_labels, epochs=10, batch_size=128)`。
#
# 训练循环由训练器执行。数据模块在设备上把每个批量除以 255（`on_after_batch_transfer`），不减均值、不除
# 标准差，和原教程一样。`CSVLogger` 记录每一轮的指标（相当于 Keras 的 `History`）；mnist_lit 的进度回调
# `EpochLine` 每轮打印一行 Keras 风格的输出。

# %%
logger = CSVLogger(OUT, name="logs")  # OUT/logs/version_0/metrics.csv, one row per epoch
trainer = L.Trainer(max_epochs=EPOCHS, logger=logger, callbacks=[EpochLine()],
                    enable_checkpointing=False,  # Keras' fit writes no checkpoint either
                    enable_model_summary=False)  # the summary was printed above, Keras' way
trainer.fit(model, datamodule=dm)

# %% [markdown] lang="en"
# ## 5. Evaluate it
#
# Keras: `test_loss, test_acc = model.evaluate(test_images, test_labels)`.

# %% [markdown] lang="zh"
# ## 5. 评估
#
# Keras：`test_loss, test_acc = model.evaluate(test_images, test_labels)`。

# %%
results = trainer.test(model, datamodule=dm, verbose=False)[0]
print(f"Test: loss: {results['test_loss']:.4f} - acc: {results['test_acc']:.4f}")

# %% [markdown] lang="en"
# ## 6. Plot the curves
#
# Keras: the lists in `history.history`, drawn with matplotlib; here they are read from the logger's
# `metrics.csv`. The tutorial keeps no validation data, so each metric has its training curve; the
# dotted line is the test result above.

# %% [markdown] lang="zh"
# ## 6. 画出训练曲线
#
# Keras 用 matplotlib 画 `history.history` 里的列表；这里从日志记录器的 `metrics.csv` 读出同样的数据。原教程
# 没有验证集，所以每个指标只有训练曲线；虚线是上面的测试结果。

# %%
history = report.logged_history(logger.log_dir)  # metrics.csv as Keras' history.history
for lang in LANGS:
    report.plot_curves(history, OUT / f"curves_{lang}.png", test=results, lang=lang)
    show(OUT / f"curves_{lang}.png", lang)

# %% [markdown] lang="en"
# ## 7. Predict
#
# Keras: `model.predict(test_images)`, each image's 10 probabilities. `trainer.predict` runs the
# module's `predict_step` (the network, then softmax) over the test images. Where the errors fall: true
# class in rows, predicted class in columns.

# %% [markdown] lang="zh"
# ## 7. 预测
#
# Keras 的 `model.predict(test_images)` 给出每张图片的 10 个概率。`trainer.predict` 在测试图片上运行模块的
# `predict_step`（先过网络，再做 softmax）。下面的混淆矩阵显示错误出在哪里，行是真实类别，列是预测类别。

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
# The twelve mistakes the network is surest of, out of all 10,000 test images, most confident first.

# %% [markdown] lang="zh"
# 下面是 10,000 张测试图片里网络错得最有把握的 12 张，按它给错误答案的概率从高到低排列。

# %%
confidence = probs.max(1).values
wrong = (predicted != test_labels).nonzero().flatten()
worst = wrong[confidence[wrong].argsort(descending=True)][:12]
for lang in LANGS:
    report.plot_misclassified(test_images[worst], [str(int(t)) for t in test_labels[worst]],
                              [str(int(p)) for p in predicted[worst]], confidence[worst].tolist(),
                              OUT / f"mistakes_{lang}.png", lang=lang)
    show(OUT / f"mistakes_{lang}.png", lang)
