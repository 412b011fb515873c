# %% [markdown] lang="en"
# # dense512: the Keras "hello world", in Lightning
#
# [中文](zh/dense512.md)
#
# The first network of Chollet's *Deep Learning with Python* (chapter 2): each 28 x 28 image flattened
# to 784 numbers, a Dense layer of 512 ReLU units, a Dense layer of 10 classes; RMSprop, 5 epochs of
# batches of 128. The book reports about 98% test accuracy; mnist_lit reaches 0.9794 with seed 0 (the
# README's table), and the `Test:` line below is this page's own run.
#
# The steps follow the book's order, and each names the Keras call it replaces. The code is plain
# Lightning (`L.Trainer`, a `CSVLogger`) around mnist_lit's LightningModule, whose source is shown as it
# is. This file is a jupytext `py:percent` script: plain Python that opens as a notebook (`make notebook`,
# see the README). `make docs` executes it and writes this page with its outputs.
#
# `MNIST_LIT_TUTORIAL_EPOCHS=1` trains 1 epoch instead of 5 (the tests set it); unset, the published
# recipe runs in full.

# %% [markdown] lang="zh"
# # dense512：Keras 的 "hello world"，用 Lightning 来写
#
# [English](../dense512.md) · [术语对照](../../glossary.md)
#
# 这是 Chollet《Python 深度学习》第 2 章的第一个网络：把每张 28 x 28 的图片展平成 784 个数，接一个 512 个
# 单元、ReLU 激活的 Dense 层，再接一个输出 10 个类别的 Dense 层；优化器用 RMSprop，批量大小 128，训练 5 轮（epoch）。
# 书中给出的测试准确率约为 98%；mnist_lit 在随机种子 0 下得到 0.9794（见 README 的表格），下面 `Test:`
# 那一行是本页这次运行的结果。
#
# 本页按书中的顺序一步一步来，每一步都先说它替代的是哪个 Keras 调用，再说哪里不同、为什么。代码是普通的
# Lightning 写法（`L.Trainer`、`CSVLogger`），训练逻辑在 mnist_lit 的 LightningModule 里，页面上直接显示
# 它的源代码。代码与英文版共用同一份，所以注释和输出都是英文；术语的中文译名见[术语对照](../../glossary.md)。
# 本页的源文件 `dense512.py` 是 jupytext 的 `py:percent` 格式：它本身是普通的 Python 脚本，也能当作
# notebook 打开（`make notebook`，见 README）。`make docs` 会运行它，连同输出一起生成本页。
#
# 设置环境变量 `MNIST_LIT_TUTORIAL_EPOCHS=1` 只训练 1 轮而不是 5 轮（测试就是这样做的）；不设置时按原教程
# 完整训练。

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


def show(path):  # a figure written to a file, shown in the notebook
    display(Image(filename=str(path)))


def show_source(*objects):  # mnist_lit's code as it is now: read when the notebook runs, never a copy
    display(Markdown("\n\n".join(f"```python\n{textwrap.dedent(inspect.getsource(o)).rstrip()}\n```"
                                 for o in objects)))


# %% [markdown] lang="en"
# ## 1. Load the data and look at it
#
# Keras: `keras.datasets.mnist.load_data()` hands back four numpy arrays. Here a LightningDataModule
# owns the data and serves batches to the Trainer. `MNISTDataModule` finds the four MNIST files (the
# repo ships them in `data/MNIST/raw`, so nothing is downloaded) and keeps the images as uint8 tensors
# laid out channels-first, N x 1 x 28 x 28, the order PyTorch's layers expect (Keras: N x 28 x 28).
# Labels stay class indices 0-9: the loss below takes indices, so there is no `to_categorical`.

# %% [markdown] lang="zh"
# ## 1. 读入数据，看一看
#
# Keras：`keras.datasets.mnist.load_data()` 返回四个 numpy 数组。Lightning 里由数据模块（LightningDataModule）
# 管理数据，并把一个个批量交给训练器（Trainer）。`MNISTDataModule` 会找到 MNIST 的四个文件（仓库的
# `data/MNIST/raw` 里已经有了，不需要下载），图片保存为 uint8 张量，形状是通道在前的 N x 1 x 28 x 28，这是
# PyTorch 各层要求的顺序（Keras 的数组是 N x 28 x 28）。标签仍是 0-9 的类别编号：下面的损失函数直接接受
# 类别编号，所以不需要 `to_categorical` 转成独热编码。

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
# returns logits, and the loss is cross-entropy on logits, which equals softmax followed by categorical
# cross-entropy but is computed in one stable step (log-softmax). Softmax comes back wherever
# probabilities are asked for (predict, exports). The source, as mnist_lit has it now:

# %% [markdown] lang="zh"
# ## 2. 搭建网络
#
# Keras：`keras.Sequential([layers.Dense(512, activation="relu"), layers.Dense(10, activation="softmax")])`，
# 再调用 `model.summary()`。书中先把图片 reshape 成 60000 x 784；这里由网络的第一层 `nn.Flatten` 对每个
# 批量做这件事。
#
# 网络本身是一个普通的 `nn.Sequential`，层的顺序与 Keras 相同，叫 `Dense512Net`。`Dense512` 是一个
# LightningModule，它把网络保存在 `model.net` 中，书中的训练配方就是它各个参数的默认值。权重的初始化与 Keras
# 相同（glorot-uniform 权重，偏置为零）。最后一层没有 softmax：网络输出 logits，损失是基于 logits 的交叉熵，
# 数值上等于先做 softmax 再算交叉熵，但用 log-softmax 一步算完，数值更稳定。需要概率的地方（预测、导出的
# 模型）再加上 softmax。下面是 mnist_lit 当前的源代码：

# %%
show_source(Dense512Net, Dense512)
model = Dense512()
print(report.keras_summary(model.net, model.name))

# %% [markdown] lang="en"
# `report.keras_summary` prints Keras' `model.summary()` table, which Keras users look for; the parameter
# count is Keras' own, 407,050. (Lightning's own `ModelSummary` lists the module's children instead.)

# %% [markdown] lang="zh"
# `report.keras_summary` 打印的是 Keras 用户熟悉的 `model.summary()` 表格，参数总数与 Keras 相同，都是
# 407,050。（Lightning 自带的 `ModelSummary` 列出的是模块的子模块，格式不同。）

# %% [markdown] lang="en"
# ## 3. Compile it
#
# Keras: `model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])`.
#
# Lightning has no `compile`: the optimizer, the loss and the metrics are methods of the LightningModule.
# `step` is one step of Keras' `fit` written out: the forward pass, cross-entropy on the logits, and the
# metrics (torchmetrics). `training_step` returns the loss; Lightning then runs the backward pass, the
# optimizer's update and `zero_grad` (its automatic optimization). `validation_step` and
# `test_step` measure the same loss and accuracy without updating, and each metric is logged once per
# epoch. `configure_optimizers` builds the optimizer that `compile` named. For `"rmsprop"` that is
# `KerasRMSprop` (`mnist_lit/optim.py`), not `torch.optim.RMSprop`: Keras adds eps inside the square
# root, `w -= lr * g / sqrt(v + eps)`, torch outside it, `sqrt(v) + eps`, and the weights of the two drift
# apart within a few steps. The five tutorials share these methods (class `Tutorial`):

# %% [markdown] lang="zh"
# ## 3. 编译模型
#
# Keras：`model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])`。
#
# Lightning 没有 `compile`：优化器、损失和指标都写成 LightningModule 的方法。`step` 就是 Keras `fit` 里的
# 一步，只是明明白白地写出来：前向传播，对 logits 算交叉熵，再更新指标（torchmetrics）。`training_step` 返回
# 损失，反向传播、优化器更新和 `zero_grad` 由 Lightning 完成（自动优化）。`validation_step` 和 `test_step` 计算同样的损失和准确率，但不更新权重；每个指标每轮
# 只记录一次。`configure_optimizers` 创建 `compile` 里指定的那个优化器。`"rmsprop"` 对应的是
# `KerasRMSprop`（`mnist_lit/optim.py`），而不是 `torch.optim.RMSprop`：Keras 把 eps 加在平方根里面，
# `w -= lr * g / sqrt(v + eps)`，torch 加在外面，`sqrt(v) + eps`，用两者训练，几步之后权重就不一样了。五个教程
# 共用这些方法（`Tutorial` 类）：

# %%
show_source(Tutorial.step, Tutorial.training_step, Tutorial.log_metrics, Tutorial.on_train_epoch_start,
            Tutorial.validation_step, Tutorial.configure_optimizers)
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
# `EpochLine` (mnist_lit's progress callback) prints the line Keras prints per epoch; Lightning's own
# bar shows the same numbers in another layout.

# %% [markdown] lang="zh"
# ## 4. 训练
#
# Keras：先 `train_images.astype("float32") / 255`，再 `model.fit(train_images, train_labels, epochs=5, batch_size=128)`。
#
# 训练循环由 Lightning 的训练器（`Trainer`）执行；数据模块在每个批量送到设备上之后把它除以 255
# （`on_after_batch_transfer`），不减均值、不除标准差，和书中一样。`CSVLogger` 把每一轮的指标写进
# `metrics.csv`，相当于 Keras 的 `History`。`EpochLine` 是 mnist_lit 的进度回调（callback），每轮打印一行
# Keras 风格的输出；Lightning 自带的进度条显示的是同样的数字，只是格式不同。

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
# Keras：用 matplotlib 画 `history.history["loss"]` 和 `["accuracy"]`。这里同样的数据来自日志记录器写的
# `metrics.csv`。书中训练时没有验证集，所以每个指标只有一条曲线；虚线是上面的测试结果。

# %%
print((Path(logger.log_dir) / "metrics.csv").read_text())
history = report.logged_history(logger.log_dir)  # metrics.csv as Keras' history.history
report.plot_curves(history, OUT / "curves.png", test=results)
show(OUT / "curves.png")

# %% [markdown] lang="en"
# ## 7. Predict
#
# Keras: `model.predict(test_images)` gives each image's 10 probabilities. `trainer.predict` runs the
# module's `predict_step` (the network, then softmax) over the DataModule's test images. The confusion
# matrix shows where the errors fall: true class in rows, predicted class in columns.

# %% [markdown] lang="zh"
# ## 7. 预测
#
# Keras：`model.predict(test_images)` 给出每张图片属于 10 个类别的概率。`trainer.predict` 在数据模块的
# 测试图片上运行模块的 `predict_step`（网络，再加 softmax）。混淆矩阵显示错误出在哪里：行是真实类别，
# 列是预测类别。

# %%
probs = torch.cat(trainer.predict(model, datamodule=dm))  # 10000 x 10
test_images, test_labels = dm.test_set()
predicted = probs.argmax(1)
matrix = confusion_matrix(predicted, test_labels, task="multiclass", num_classes=10)
report.plot_confusion(matrix.tolist(), list(dm.classes), OUT / "confusion.png", results["test_acc"])
show(OUT / "confusion.png")

# %% [markdown] lang="en"
# The first 16 test images; each title reads predicted (true), and red marks a mistake.

# %% [markdown] lang="zh"
# 前 16 张测试图片，标题的格式是“预测 (true 真实)”，红色表示预测错了。

# %%
show(report.plot_images(test_images[:16], [f"{p} (true {t})" for p, t in zip(predicted.tolist(), test_labels.tolist())],
                        OUT / "predictions.png", wrong=[k for k in range(16) if predicted[k] != test_labels[k]]))
