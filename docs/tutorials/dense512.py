# %% [markdown] lang="en"
# # dense512: the Keras "hello world", in Lightning
#
# [中文](zh/dense512.md)
#
# The first network of Chollet's *Deep Learning with Python* (chapter 2): each 28 x 28 image flattened
# to 784 numbers, a Dense layer of 512 ReLU units, a Dense layer of 10 classes; RMSprop, 5 epochs of
# batches of 128. The book reports about 98% test accuracy; this page's own run prints its result in
# step 5, on the `Test:` line.
#
# The steps follow the book's order, and each names the Keras call it replaces. The code is plain
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
# instead of 5 (the tests set it); unset, the published recipe runs in full.

# %% [markdown] lang="zh"
# # dense512：Keras 的 "hello world"，用 Lightning 来写
#
# [English](../dense512.md) · [术语对照](../../glossary.md)
#
# 这是 Chollet《Python 深度学习》第 2 章的第一个网络。每张 28 x 28 的图片展平成 784 个数，先经过一个 512
# 个单元、ReLU 激活的全连接层（Dense 层），再经过一个输出 10 个类别的全连接层；优化器用 RMSprop，批量大小
# 128，训练 5 轮（epoch，即把整个训练集过一遍）。书中的测试准确率约为 98%，本页这次运行的结果见第 5 步
# `Test:` 那一行。
#
# 本页按书中的顺序往下走，每一步先说它替代的是哪个 Keras 调用。训练逻辑在 mnist_lit 的 LightningModule 里，
# 页面上显示的就是它现在的源代码。Keras 的几个调用在 Lightning 里分别对应：
#
# | Keras | Lightning |
# | --- | --- |
# | `model.compile(optimizer, loss, metrics)` | LightningModule 的方法：`configure_optimizers` 返回优化器，损失和指标在训练步里计算 |
# | `model.fit(x, y, epochs, batch_size)` | 训练器（Trainer）：`Trainer(max_epochs=...).fit(model, datamodule=dm)`；批量大小由数据模块决定 |
# | `History` | 日志记录器：`CSVLogger` 写的 `metrics.csv`（或 TensorBoard 的日志） |
# | `model.evaluate(x, y)` | `trainer.test(model, datamodule=dm)` |
# | `model.predict(x)` | `trainer.predict(model, datamodule=dm)` |
#
# 代码与英文版共用一份，所以注释和输出是英文的；术语的译法见[术语对照](../../glossary.md)。源文件
# `dense512.py` 是 jupytext 的 `py:percent` 脚本，本身是普通的 Python，也能当作 notebook 打开（`make notebook`，
# 见 README）；`make docs` 运行它并生成本页。设置 `MNIST_LIT_TUTORIAL_EPOCHS=1` 只训练 1 轮（测试就是这样
# 做的）；不设置时按原书完整训练 5 轮。

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
from mnist_lit.models.dense512 import Dense512, Dense512Net

EPOCHS = min(5, int(os.environ.get("MNIST_LIT_TUTORIAL_EPOCHS", 5)))
OUT = Path("checkpoints/tutorials/dense512")  # logs and figures go here, under the working directory
OUT.mkdir(parents=True, exist_ok=True)
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available: False", no tips
warnings.filterwarnings("ignore", message=".*(LeafSpec|Total length of `list`)")  # nothing to act on here
report.chinese_fonts()  # a CJK font as fallback, for figures with Chinese text (Debian: fonts-noto-cjk)
L.seed_everything(0)  # the CLI's default seed, so this run starts where `fit --config dense512` does


LANGS = ("en", "zh")  # a figure with words in it is drawn once per language; each page shows its own


def show(path, lang=None):  # a figure written to a file, shown in the notebook (`lang`: on that page only)
    display(Image(filename=str(path)), metadata={"lang": lang} if lang else None)


def show_source(*objects):  # mnist_lit's code as it is now: read when the notebook runs, never a copy
    display(Markdown("\n\n".join(f"```python\n{textwrap.dedent(inspect.getsource(o)).rstrip()}\n```"
                                 for o in objects)))


# %% [markdown] lang="en"
# ## 1. Load the data and look at it
#
# Keras: `keras.datasets.mnist.load_data()` hands back four numpy arrays. In Lightning a DataModule owns
# the data and hands batches to the Trainer. The Trainer calls its methods itself during `fit`; they are
# called by hand here only to look at a batch before training:
#
# - `MNISTDataModule(batch_size=128)` only records the settings; nothing is read yet.
# - `dm.prepare_data()` makes sure the files are on disk: the four MNIST files ship with the repo in
#   `data/MNIST/raw`, and it decompresses them there once (with no files it would download them).
#   Lightning calls it once per machine, so whatever writes to disk belongs here.
# - `dm.setup("fit")` reads every split into memory once: the 60,000 training and 10,000 test images (and
#   the validation images, when a recipe has some); later calls, for any stage, return at once. Lightning
#   calls it in every process, before it asks for that stage's batches.
# - `dm.train_dataloader()` gives the training batches, shuffled again each epoch. The Trainer also asks
#   for `val_dataloader()`, `test_dataloader()` and `predict_dataloader()` in `fit`, `test` and `predict`.
#
# The images stay uint8, laid out channels-first, N x 1 x 28 x 28, the order PyTorch's layers expect
# (Keras: N x 28 x 28). Labels stay class indices 0-9, which the loss takes as they are: no `to_categorical`.

# %% [markdown] lang="zh"
# ## 1. 读入数据，看一看
#
# Keras 用 `keras.datasets.mnist.load_data()` 得到四个 numpy 数组。Lightning 里数据归数据模块
# （LightningDataModule）管，由它把一个个小批量交给训练器。`fit` 时训练器会自己调用数据模块的方法；这里
# 手工调用，只是为了在训练前先看一个批量：
#
# - `MNISTDataModule(batch_size=128)` 只记下各项设置，还不读任何文件。
# - `dm.prepare_data()` 保证数据文件在磁盘上。MNIST 的四个文件随仓库放在 `data/MNIST/raw`，它在原地解压
#   一次（没有文件时会去下载）。Lightning 在每台机器上只调用它一次，所以写磁盘的事都放在这里。
# - `dm.setup("fit")` 把所有数据一次读进内存：6 万张训练图片和 1 万张测试图片（配方里有验证集时还有验证集）。
#   之后不论为哪个阶段再调用，都会立即返回。Lightning 在每个进程里、取某个阶段的批量之前调用它。
# - `dm.train_dataloader()` 给出训练用的批量，每轮重新打乱一次。`fit`、`test`、`predict` 时，训练器还会
#   分别调用 `val_dataloader()`、`test_dataloader()` 和 `predict_dataloader()`。
#
# 图片仍是 uint8，形状是通道在前的 N x 1 x 28 x 28，这是 PyTorch 各层要求的顺序（Keras 的数组是
# N x 28 x 28）。标签仍是 0-9 的类别编号，损失函数直接接受，不必用 `to_categorical` 转成独热编码。

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
# Keras: `keras.Sequential([layers.Dense(512, activation="relu"), layers.Dense(10, activation="softmax")])`
# and `model.summary()`. The book first reshapes the images to 60000 x 784; here the network's first
# layer, `nn.Flatten`, does that to each batch.
#
# The network is a plain `nn.Sequential` in Keras' layer order, `Dense512Net`. `Dense512` is the
# LightningModule that holds it as `model.net` together with the book's recipe (its defaults). Its
# weights start as Keras' do (glorot-uniform, zero biases). The last layer has no softmax: the network
# returns logits, the scores before softmax turns them into probabilities, and the loss is cross-entropy
# on logits, which equals softmax followed by categorical cross-entropy but is computed in one stable step
# (log-softmax). Softmax comes back wherever probabilities are asked for (predict, exports).

# %% [markdown] lang="zh"
# ## 2. 搭建网络
#
# Keras：`keras.Sequential([layers.Dense(512, activation="relu"), layers.Dense(10, activation="softmax")])`，
# 再调用 `model.summary()`。书中先把图片 reshape 成 60000 x 784；这里由网络的第一层 `nn.Flatten` 对每个
# 批量做这件事。
#
# 网络本身是一个普通的 `nn.Sequential`，叫 `Dense512Net`，层的顺序与 Keras 相同。`Dense512` 是
# LightningModule，网络存放在它的 `model.net` 里，书中的训练配方就是它各个参数的默认值。权重的初始化与 Keras
# 相同（glorot-uniform 权重，偏置为零）。最后一层不做 softmax（归一化指数函数，把分数变成概率），网络输出的是
# logits，即未经 softmax 的分数。损失用基于 logits 的交叉熵，数值上等于先做 softmax 再算分类交叉熵，但用
# log-softmax 一步算完，数值更稳定。需要概率的地方（预测、导出的模型）再加上 softmax。

# %%
show_source(Dense512Net, Dense512)
model = Dense512()
print(report.keras_summary(model.net, model.name))

# %% [markdown] lang="en"
# `report.keras_summary` prints Keras' `model.summary()` table; the parameter count is Keras' own,
# 407,050. (Lightning's own `ModelSummary` lists the module's children instead.)

# %% [markdown] lang="zh"
# `report.keras_summary` 打印的是 Keras 用户熟悉的 `model.summary()` 表格，参数总数与 Keras 相同，都是
# 407,050。（Lightning 自带的 `ModelSummary` 列出的是模块的各个子模块，格式不同。）

# %% [markdown] lang="en"
# ## 3. Compile it
#
# Keras: `model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])`.
# Keras' `compile` compiles no code itself: it records the optimizer, the loss and the metrics for `fit` (its
# `jit_compile` option decides whether `fit` has XLA compile the step, which Keras 3 does by default where it
# can). mnist_lit compiles nothing: its step runs as the Python below.
#
# In Lightning these are methods of the LightningModule, shared by the five tutorials (class `Tutorial`).
# The training step, line by line:
#
# - `x, y = batch`: one batch from the DataModule, images already divided by 255 and their class indices.
# - `logits = self(x)`: the forward pass, the network's 10 logits per image.
# - `loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)`: the loss `compile` named,
#   cross-entropy on logits, the mean over the batch as Keras takes it.
# - `self.metrics[f"{stage}_acc"].update(logits.detach(), y)`: the metrics (torchmetrics) add this batch
#   to the epoch's totals, the loss likewise; `detach()` keeps them out of the gradient. `log_metrics`
#   hands them to the logger, which records each once per epoch.
# - `return loss` in `training_step`: the step ends here. It calls no backward and no optimizer.
#
# The rest is Lightning's *automatic optimization*: for each batch it calls `training_step`, then the
# optimizer's `zero_grad()`, which sets every weight's gradient (`.grad`) back to zero (torch in fact sets it
# to `None`; otherwise
# `backward` would add this batch's gradients to the previous batch's), then `loss.backward()`, which
# computes the gradients, then the optimizer's `step()`, which updates the weights. In *manual
# optimization* (`self.automatic_optimization = False`) the step would make those calls itself, with
# `self.manual_backward(loss)`; that is for recipes such as GANs with several optimizers, and mnist_lit
# does not use it. Things that change only the speed (the thread count, channels-last weights for the
# cnn, denormal numbers flushed to zero) sit outside the step, in the `SpeedDevices` callback
# (`mnist_lit/speed.py`), which every fit adds.
#
# `configure_optimizers` builds the optimizer `compile` named. For `"rmsprop"` that is `KerasRMSprop`
# (`mnist_lit/optim.py`), not `torch.optim.RMSprop`: Keras adds eps inside the square root,
# `w -= lr * g / sqrt(v + eps)`, torch outside it, `sqrt(v) + eps`, and the weights of the two drift
# apart within a few steps.

# %% [markdown] lang="zh"
# ## 3. 编译模型
#
# Keras：`model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])`。
# Keras 的 `compile` 本身并不编译代码，它只是记下 `fit` 要用的优化器、损失和指标（它的 `jit_compile` 选项决定 `fit` 是否让 XLA 编译训练步，Keras 3
# 在可行时默认这样做）。mnist_lit 不编译任何东西，
# 训练步就按下面的 Python 代码执行。
#
# 在 Lightning 里，这些都是 LightningModule 的方法，五个教程共用（`Tutorial` 类）。训练步逐行来看：
#
# - `x, y = batch`：数据模块给的一个批量，图片已经除以 255，标签是类别编号。
# - `logits = self(x)`：前向传播，网络给每张图片输出 10 个 logits。
# - `loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)`：`compile` 里指定的损失，基于
#   logits 的交叉熵，和 Keras 一样对批量取平均。
# - `self.metrics[f"{stage}_acc"].update(logits.detach(), y)`：指标（torchmetrics）把这个批量累加到本轮的
#   统计里，损失也一样；`detach()` 让它们不参与求梯度。`log_metrics` 把它们交给日志记录器，每个指标每轮记录一次。
# - `training_step` 里的 `return loss`：训练步到此结束，它既不做反向传播，也不调用优化器。
#
# 其余的事由 Lightning 的**自动优化**完成。对每个批量，它先调用 `training_step`，再调用优化器的
# `zero_grad()`，把每个权重的梯度（`.grad`）清零（torch 实际上是把它设成 `None`；否则 `backward` 会把这个批量的梯度加到上一个批量的梯度
# 上），然后 `loss.backward()` 算出梯度，最后调用优化器的 `step()` 更新权重。如果用**手动优化**
# （`self.automatic_optimization = False`），这几步要在训练步里自己调用，反向传播写成
# `self.manual_backward(loss)`；GAN 这类有多个优化器的配方才需要它，mnist_lit 不用。只影响速度的手段（每轮
# 选择线程数、cnn 的卷积权重用通道在后的内存布局、把非规格化浮点数当作零）都不在训练步里，而在
# `SpeedDevices` 回调（`mnist_lit/speed.py`）中，每次训练都会自动加上它。
#
# `configure_optimizers` 创建 `compile` 里指定的优化器。`"rmsprop"` 对应的是 `KerasRMSprop`
# （`mnist_lit/optim.py`），而不是 `torch.optim.RMSprop`。Keras 把 eps 加在平方根里面，
# `w -= lr * g / sqrt(v + eps)`，torch 则加在外面，`sqrt(v) + eps`，两者训练几步之后权重就不一样了。

# %%
show_source(Tutorial.step, Tutorial.training_step, Tutorial.log_metrics, Tutorial.on_train_epoch_start,
            Tutorial.configure_optimizers)
print(model.configure_optimizers())

# %% [markdown] lang="en"
# ## 4. Fit it
#
# Keras: `model.fit(train_images, train_labels, epochs=5, batch_size=128)`, after
# `train_images.astype("float32") / 255`.
#
# A Lightning `Trainer` runs the loop; the DataModule divides each batch by 255 once it is on the
# device (`on_after_batch_transfer`), with no mean or standard deviation, as the book does. A
# `CSVLogger` writes each epoch's metrics to `metrics.csv`, which stands in for Keras' `History`.
# `EpochLine` (mnist_lit's progress callback) prints the line Keras prints per epoch.

# %% [markdown] lang="zh"
# ## 4. 训练
#
# Keras：先 `train_images.astype("float32") / 255`，再 `model.fit(train_images, train_labels, epochs=5,
# batch_size=128)`。
#
# 训练循环由训练器执行。数据模块在每个批量送到设备上之后把它除以 255（`on_after_batch_transfer`），不减均值、
# 不除标准差，和书中一样。`CSVLogger` 把每一轮的指标写进 `metrics.csv`，相当于 Keras 的 `History`。
# `EpochLine` 是 mnist_lit 的进度回调，每轮打印一行 Keras 风格的输出。

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
# Keras: `history.history["loss"]` and `["accuracy"]` drawn with matplotlib. Here the same lists come
# from the logger's `metrics.csv`. The book trains without validation data, so there is one curve per
# metric; the dotted line is the test result above.

# %% [markdown] lang="zh"
# ## 6. 画出训练曲线
#
# Keras 用 matplotlib 画 `history.history["loss"]` 和 `["accuracy"]`。这里同样的数据来自日志记录器写的
# `metrics.csv`。书中训练时没有验证集，所以每个指标只有一条曲线；虚线是上面的测试结果。

# %%
print((Path(logger.log_dir) / "metrics.csv").read_text())
history = report.logged_history(logger.log_dir)  # metrics.csv as Keras' history.history
for lang in LANGS:
    report.plot_curves(history, OUT / f"curves_{lang}.png", test=results, lang=lang)
    show(OUT / f"curves_{lang}.png", lang)

# %% [markdown] lang="en"
# ## 7. Predict
#
# Keras: `model.predict(test_images)` gives each image's 10 probabilities. `trainer.predict` runs the
# module's `predict_step` (the network, then softmax) over the DataModule's test images. The confusion
# matrix shows where the errors fall: true class in rows, predicted class in columns.

# %% [markdown] lang="zh"
# ## 7. 预测
#
# Keras 的 `model.predict(test_images)` 给出每张图片属于 10 个类别的概率。`trainer.predict` 在数据模块的
# 测试图片上运行模块的 `predict_step`（先过网络，再做 softmax）。混淆矩阵显示错误出在哪里，行是真实类别，
# 列是预测类别。

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
# The first 16 test images; each title reads predicted (true), and red marks a mistake.

# %% [markdown] lang="zh"
# 下面是前 16 张测试图片。标题先写预测的数字，括号里是真实的数字；红色表示预测错了。

# %%
TRUE = {"en": "{} (true {})", "zh": "{}（实为 {}）"}  # predicted, true
wrong = [k for k in range(16) if predicted[k] != test_labels[k]]
for lang in LANGS:
    titles = [TRUE[lang].format(p, t) for p, t in zip(predicted.tolist(), test_labels.tolist())]
    show(report.plot_images(test_images[:16], titles, OUT / f"predictions_{lang}.png", wrong=wrong), lang)
