# %% [markdown] lang="en"
# # cnn: the Keras convolutional network, in Lightning
#
# [中文](zh/cnn.md)
#
# The Keras CNN tutorial: three blocks of a 3 x 3 convolution with ReLU and a 2 x 2 max-pool (32, 64
# and 64 filters), then Dense layers of 64, 500 and 10; RMSprop, 10 epochs of batches of 128. The
# tutorial reports 98.68% test accuracy; mnist_lit reaches 0.9880 with seed 0 (the README's table), and
# the `Test:` line below is this page's own run.
#
# The steps follow the tutorial's order, and each names the Keras call it replaces. The code is plain
# Lightning (`L.Trainer`, a `CSVLogger`) around mnist_lit's LightningModule, whose source is shown as it
# is. This file is a jupytext `py:percent` script: plain Python that opens as a notebook (`make notebook`,
# see the README). `make docs` executes it and writes this page with its outputs.
#
# `MNIST_LIT_TUTORIAL_EPOCHS=1` trains 1 epoch instead of 10 (the tests set it); unset, the published
# recipe runs in full.

# %% [markdown] lang="zh"
# # cnn：Keras 的卷积神经网络，用 Lightning 来写
#
# [English](../cnn.md) · [术语对照](../../glossary.md)
#
# Keras 的 CNN 教程：三组“3 x 3 卷积 + ReLU + 2 x 2 最大池化”（卷积核个数依次为 32、64、64），再接 64、500、
# 10 个单元的 Dense 层；优化器用 RMSprop，批量大小 128，训练 10 轮。原教程给出的测试准确率是 98.68%；
# mnist_lit 在随机种子 0 下得到 0.9880（见 README 的表格），下面 `Test:` 那一行是本页这次运行的结果。
#
# 本页按原教程的顺序一步一步来，每一步都说明它替代的是哪个 Keras 调用。代码是普通的 Lightning 写法
# （`L.Trainer`、`CSVLogger`），训练逻辑在 mnist_lit 的 LightningModule 里，页面上直接显示它的源代码。
# 代码与英文版共用，所以注释和输出是英文的；术语见[术语对照](../../glossary.md)。源文件 `cnn.py` 是
# jupytext 的 `py:percent` 脚本，也能当作 notebook 打开（`make notebook`，见 README）；`make docs` 运行它并
# 生成本页。
#
# 设置 `MNIST_LIT_TUTORIAL_EPOCHS=1` 只训练 1 轮而不是 10 轮（测试就是这样做的）；不设置时按原教程完整训练。

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


def show(path):  # a figure written to a file, shown in the notebook
    display(Image(filename=str(path)))


def show_source(*objects):  # mnist_lit's code as it is now: read when the notebook runs, never a copy
    display(Markdown("\n\n".join(f"```python\n{textwrap.dedent(inspect.getsource(o)).rstrip()}\n```"
                                 for o in objects)))


# %% [markdown] lang="en"
# ## 1. Load the data and look at it
#
# Keras: `keras.datasets.mnist.load_data()`, then `reshape((60000, 28, 28, 1))` to give the
# convolutions a channel axis. `MNISTDataModule` finds the MNIST files the repo ships in
# `data/MNIST/raw` and serves batches that already have one: N x 1 x 28 x 28, channels first, as
# PyTorch's `Conv2d` takes them (Keras puts the channel last, N x 28 x 28 x 1). Labels stay class
# indices 0-9: the loss takes indices, so there is no `to_categorical`.

# %% [markdown] lang="zh"
# ## 1. 读入数据，看一看
#
# Keras：`keras.datasets.mnist.load_data()`，再 `reshape((60000, 28, 28, 1))`，给卷积层加上通道这一维。
# `MNISTDataModule` 读取仓库自带的 `data/MNIST/raw` 中的 MNIST 文件，给出的批量已经带有通道维：
# N x 1 x 28 x 28，通道在前，这是 PyTorch 的 `Conv2d` 要求的格式（Keras 把通道放在最后，N x 28 x 28 x 1）。
# 标签仍是 0-9 的类别编号：损失函数直接接受类别编号，所以不需要 `to_categorical`。

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
# the parameter count matches Keras' summary. The last layer returns logits, with no softmax: the loss is
# cross-entropy on logits, the same value as softmax followed by categorical cross-entropy, computed in
# one stable step.

# %% [markdown] lang="zh"
# ## 2. 搭建网络
#
# Keras：`layers.Conv2D(32, (3, 3), activation="relu")`、`layers.MaxPooling2D((2, 2))` 等，接着
# `layers.Flatten()`、`layers.Dense(64, activation="relu")`、`layers.Dense(500, activation="relu")`、
# `layers.Dense(10, activation="softmax")`；最后 `model.summary()`。
#
# `CNNNet` 就是这一串层，写成普通的 `nn.Sequential`，顺序与 Keras 相同。Keras 中带 `activation` 参数的
# `Conv2D`，在这里是两层：`nn.Conv2d` 和 `nn.ReLU`；`nn.Conv2d` 需要写明输入通道数（1、32、64），Keras 会
# 自动推断。`CNN` 是 LightningModule，把网络存为 `model.net`，并带上原教程的训练配方。权重初始化与 Keras
# 相同（glorot-uniform 权重、零偏置），所以参数个数与 Keras 的摘要一致。最后一层输出 logits，不做
# softmax：损失是基于 logits 的交叉熵，数值上等于 softmax 加分类交叉熵，但一步算完，更稳定。

# %%
show_source(CNNNet, CNN)
model = CNN()
print(report.keras_summary(model.net, model.name))

# %% [markdown] lang="en"
# ## 3. Compile it
#
# Keras: `model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])`.
#
# The LightningModule holds what `compile` configures: `step` computes the loss and the metrics
# (torchmetrics), `training_step` returns the loss and Lightning runs the backward pass, the optimizer's
# update and `zero_grad` around it, and `configure_optimizers` builds the optimizer, here `KerasRMSprop` (`mnist_lit/optim.py`),
# which adds eps inside the square root as Keras does, `w -= lr * g / sqrt(v + eps)`;
# `torch.optim.RMSprop` adds it outside, `sqrt(v) + eps`, and its weights drift away from Keras' within
# a few steps. The five tutorials share these methods ([dense512](dense512.md) walks through them):

# %% [markdown] lang="zh"
# ## 3. 编译模型
#
# Keras：`model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])`。
#
# `compile` 配置的东西都在 LightningModule 里：`step` 计算损失和指标（torchmetrics），`training_step` 返回损失，
# 反向传播、优化器更新和 `zero_grad` 由 Lightning 在它前后执行；`configure_optimizers` 创建优化器。这里是 `KerasRMSprop`（`mnist_lit/optim.py`），它和 Keras 一样把 eps 加在平方根里面，
# `w -= lr * g / sqrt(v + eps)`；`torch.optim.RMSprop` 加在外面，`sqrt(v) + eps`，几步之后权重就和 Keras
# 的不一样了。五个教程共用这些方法（[dense512](dense512.md) 一页有逐条说明）：

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
# 训练循环由 Lightning 的 `Trainer` 执行。数据模块在设备上把每个批量除以 255（`on_after_batch_transfer`），
# 不减均值、不除标准差，和原教程一样。`CSVLogger` 记录每一轮的指标（相当于 Keras 的 `History`）；
# mnist_lit 的进度回调 `EpochLine` 每轮打印一行 Keras 风格的输出。

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
# Keras：用 matplotlib 画 `history.history` 里的列表；这里从日志记录器的 `metrics.csv` 读出同样的数据。
# 原教程没有验证集，所以每个指标只有训练曲线；虚线是上面的测试结果。

# %%
history = report.logged_history(logger.log_dir)  # metrics.csv as Keras' history.history
report.plot_curves(history, OUT / "curves.png", test=results)
show(OUT / "curves.png")

# %% [markdown] lang="en"
# ## 7. Predict
#
# Keras: `model.predict(test_images)`, each image's 10 probabilities. `trainer.predict` runs the
# module's `predict_step` (the network, then softmax) over the test images. Where the errors fall: true
# class in rows, predicted class in columns.

# %% [markdown] lang="zh"
# ## 7. 预测
#
# Keras：`model.predict(test_images)`，得到每张图片的 10 个概率。`trainer.predict` 在测试图片上运行模块的
# `predict_step`（网络，再加 softmax）。下面的混淆矩阵显示错误出在哪里：行是真实类别，列是预测类别。

# %%
probs = torch.cat(trainer.predict(model, datamodule=dm))  # 10000 x 10
test_images, test_labels = dm.test_set()
predicted = probs.argmax(1)
matrix = confusion_matrix(predicted, test_labels, task="multiclass", num_classes=10)
report.plot_confusion(matrix.tolist(), list(dm.classes), OUT / "confusion.png", results["test_acc"])
show(OUT / "confusion.png")

# %% [markdown] lang="en"
# The mistakes the network is surest of, out of all 10,000 test images:

# %% [markdown] lang="zh"
# 在全部 10,000 张测试图片中，网络最有把握却判断错了的那些：

# %%
confidence = probs.max(1).values
wrong = (predicted != test_labels).nonzero().flatten()
worst = wrong[confidence[wrong].argsort(descending=True)][:12]
report.plot_misclassified(test_images[worst], [str(int(t)) for t in test_labels[worst]],
                          [str(int(p)) for p in predicted[worst]], confidence[worst].tolist(), OUT / "mistakes.png")
show(OUT / "mistakes.png")
