# %% [markdown] lang="en"
# # fashion_mlp: TF2's basic classification of clothing, in Lightning
#
# [中文](zh/fashion_mlp.md)
#
# The TF2 docs' first classifier, on Fashion-MNIST (28 x 28 grey photos of ten kinds of clothing, the
# same format as MNIST): each image flattened, a Dense layer of 128 ReLU units, a Dense layer of 10
# logits; Adam, 10 epochs of batches of 32. The docs report 87.77% test accuracy; this page's own run
# prints its result in step 5, on the `Test:` line.
#
# The steps follow the docs' order, and each names the Keras call it replaces. The code is plain
# Lightning around mnist_lit's LightningModule, whose source is shown as it is. Where Keras' calls went:
#
# | Keras | Lightning |
# | --- | --- |
# | `model.compile(optimizer, loss, metrics)` | methods of the LightningModule: `configure_optimizers` returns the optimizer; the loss and the metrics are computed in the step |
# | `model.fit(x, y, epochs)` | `Trainer(max_epochs=...).fit(model, datamodule=dm)`; the batch size is the DataModule's |
# | `History` | the logger: `metrics.csv` from a `CSVLogger` (or TensorBoard's files) |
# | `model.evaluate(x, y)` | `trainer.test(model, datamodule=dm)` |
# | `model.predict(x)` | `trainer.predict(model, datamodule=dm)` |
#
# This file is a jupytext `py:percent` script, plain Python that opens as a notebook (`make notebook`, see
# the README); `make docs` executes it and writes this page. `MNIST_LIT_TUTORIAL_EPOCHS=1` trains 1 epoch
# instead of 10 (the tests set it); unset, the published recipe runs in full.

# %% [markdown] lang="zh"
# # fashion_mlp：TF2 文档里的服装图像分类，用 Lightning 来写
#
# [English](../fashion_mlp.md) · [术语对照](../../glossary.md)
#
# 这是 TF2 文档里的第一个分类器，数据是 Fashion-MNIST（十类服装的 28 x 28 灰度照片，格式与 MNIST 相同）。
# 每张图片展平后，先经过一个 128 个单元、ReLU 激活的全连接层（Dense 层），再经过一个 10 个单元的全连接层，
# 输出 10 个 logits，即每个类别一个还没经过 softmax（归一化指数函数，把分数变成概率）的分数。优化器用 Adam，
# 批量大小 32，训练 10 轮（epoch，即把整个训练集过一遍）。文档给出的测试准确率是 87.77%，本页这次运行的结果
# 见第 5 步 `Test:` 那一行。
#
# 本页按文档的顺序往下走，每一步先说它替代的是哪个 Keras 调用。训练逻辑在 mnist_lit 的 LightningModule 里，
# 页面上显示的就是它现在的源代码。Keras 的几个调用在 Lightning 里分别对应：
#
# | Keras | Lightning |
# | --- | --- |
# | `model.compile(optimizer, loss, metrics)` | LightningModule 的方法：`configure_optimizers` 返回优化器，损失和指标在训练步里计算 |
# | `model.fit(x, y, epochs)` | 训练器（Trainer）：`Trainer(max_epochs=...).fit(model, datamodule=dm)`；批量大小由数据模块决定 |
# | `History` | 日志记录器：`CSVLogger` 写的 `metrics.csv`（或 TensorBoard 的日志） |
# | `model.evaluate(x, y)` | `trainer.test(model, datamodule=dm)` |
# | `model.predict(x)` | `trainer.predict(model, datamodule=dm)` |
#
# 代码与英文版共用一份，所以注释和输出是英文的；术语的译法见[术语对照](../../glossary.md)。源文件
# `fashion_mlp.py` 是 jupytext 的 `py:percent` 脚本，也能当作 notebook 打开（`make notebook`，见 README）；
# `make docs` 运行它并生成本页。设置 `MNIST_LIT_TUTORIAL_EPOCHS=1` 只训练 1 轮（测试就是这样做的）；不设置时
# 按文档完整训练 10 轮。

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
from mnist_lit.models.fashion_mlp import FashionMLP, FashionMLPNet

EPOCHS = min(10, int(os.environ.get("MNIST_LIT_TUTORIAL_EPOCHS", 10)))
OUT = Path("checkpoints/tutorials/fashion_mlp")  # logs and figures go here, under the working directory
OUT.mkdir(parents=True, exist_ok=True)
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available: False", no tips
warnings.filterwarnings("ignore", message=".*(LeafSpec|Total length of `list`)")  # nothing to act on here
report.chinese_fonts()  # a CJK font as fallback, for figures with Chinese text (Debian: fonts-noto-cjk)
L.seed_everything(0)  # the CLI's default seed, so this run starts where `fit --config fashion_mlp` does


LANGS = ("en", "zh")  # a figure with words in it is drawn once per language; each page shows its own


def show(path, lang=None):  # a figure written to a file, shown in the notebook (`lang`: on that page only)
    display(Image(filename=str(path)), metadata={"lang": lang} if lang else None)


def show_source(*objects):  # mnist_lit's code as it is now: read when the notebook runs, never a copy
    display(Markdown("\n\n".join(f"```python\n{textwrap.dedent(inspect.getsource(o)).rstrip()}\n```"
                                 for o in objects)))


# %% [markdown] lang="en"
# ## 1. Load the data and look at it
#
# Keras: `keras.datasets.fashion_mnist.load_data()` and a list of the ten class names written out by
# hand. Here a DataModule owns the data; the Trainer calls its methods itself during `fit`, and they are
# called by hand below only to look at the data first:
#
# - `MNISTDataModule(dataset="fashion_mnist", batch_size=32)` records the settings and names the classes
#   (`dm.classes`); it reads nothing yet;
# - `dm.prepare_data()` makes sure the four files are on disk (the repo ships them in
#   `data/FashionMNIST/raw`; it decompresses them there once), which Lightning calls once per machine;
# - `dm.setup("fit")` reads every split into memory once (later calls return at once), in every process;
# - `dm.train_dataloader()` serves them in batches, shuffled again each epoch; `dm.test_set()` (mnist_lit's
#   own) hands back the 10,000 test images and labels as tensors, for the figures.
#
# Images are uint8, N x 1 x 28 x 28, channels first as PyTorch's layers take them (Keras' arrays:
# N x 28 x 28). `ZH` below gives each class its Chinese name, for the Chinese page's figures.

# %% [markdown] lang="zh"
# ## 1. 读入数据，看一看
#
# Keras 调用 `keras.datasets.fashion_mnist.load_data()`，再手写一个十个类别名的列表。这里数据归数据模块管，
# `fit` 时训练器会自己调用它的方法；下面手工调用，只是为了先看看数据：
#
# - `MNISTDataModule(dataset="fashion_mnist", batch_size=32)` 只记下设置，并给出类别名（`dm.classes`），
#   还不读文件；
# - `dm.prepare_data()` 保证四个数据文件在磁盘上（仓库自带 `data/FashionMNIST/raw`，它在原地解压一次），
#   Lightning 在每台机器上只调用它一次；
# - `dm.setup("fit")` 把所有数据一次读进内存（之后再调用会立即返回），每个进程都会调用；
# - `dm.train_dataloader()` 按批量给出训练图片，每轮重新打乱；`dm.test_set()` 是 mnist_lit 自己的方法，以张量
#   形式返回 10,000 张测试图片和标签，供画图用。
#
# 图片是 uint8，形状 N x 1 x 28 x 28，通道在前，这是 PyTorch 各层要求的格式（Keras 的数组是 N x 28 x 28）。
# 下面的 `ZH` 给每个类别配上中文名，用在中文页面的图里。

# %%
dm = MNISTDataModule(dataset="fashion_mnist", batch_size=32)  # Keras' default batch for model.fit
dm.prepare_data()
dm.setup("fit")
ZH = {"T-shirt/top": "T恤/上衣", "Trouser": "裤子", "Pullover": "套头衫", "Dress": "连衣裙", "Coat": "外套",
      "Sandal": "凉鞋", "Shirt": "衬衫", "Sneaker": "运动鞋", "Bag": "包", "Ankle boot": "短靴"}
NAMES = {"en": list(dm.classes), "zh": [ZH[c] for c in dm.classes]}  # the class names each page's figures use
print(dm.classes)
test_images, test_labels = dm.test_set()
print(f"{len(dm.train_dataloader())} batches of {dm.hparams.batch_size}; test images {tuple(test_images.shape)}")

# %% [markdown] lang="en"
# The docs look at one image's pixels before scaling them: values from 0 to 255. They are divided by
# 255 (Keras: `train_images / 255.0`) by the DataModule, once each batch is on the device, with no mean
# or standard deviation.

# %% [markdown] lang="zh"
# 文档先看了一张图片缩放之前的像素，取值从 0 到 255。除以 255 这一步（Keras：`train_images / 255.0`）由
# 数据模块在每个批量送到设备上之后完成，不减均值、不除标准差。

# %%
for lang in LANGS:
    fig = Figure(figsize=(3.6, 3), layout="constrained")
    ax = fig.subplots()
    fig.colorbar(ax.imshow(test_images[0, 0], cmap="gray"), ax=ax)
    ax.set_title(NAMES[lang][int(test_labels[0])])
    fig.savefig(OUT / f"one_image_{lang}.png", dpi=80)
    show(OUT / f"one_image_{lang}.png", lang)

# %%
images, labels = next(iter(dm.train_dataloader()))  # one shuffled batch, as training will see it
for lang in LANGS:
    show(report.plot_images(images[:24], [NAMES[lang][int(y)] for y in labels[:24]], OUT / f"train_images_{lang}.png",
                            size=(1.5, 1.6), fontsize=8), lang)

# %% [markdown] lang="en"
# ## 2. Build the network
#
# Keras: `keras.Sequential([layers.Flatten(input_shape=(28, 28)), layers.Dense(128, activation="relu"),
# layers.Dense(10)])` and `model.summary()`.
#
# `FashionMLPNet` is that list of layers as a plain `nn.Sequential`; `FashionMLP` is the LightningModule
# holding it as `model.net` with the docs' recipe, and Keras' initial weights (glorot-uniform, zero
# biases). Like the docs' model, it ends in logits, the scores before softmax turns them into
# probabilities, and the loss is cross-entropy on logits (Keras: `from_logits=True`).

# %% [markdown] lang="zh"
# ## 2. 搭建网络
#
# Keras：`keras.Sequential([layers.Flatten(input_shape=(28, 28)), layers.Dense(128, activation="relu"),
# layers.Dense(10)])`，再 `model.summary()`。
#
# `FashionMLPNet` 就是这几层，写成普通的 `nn.Sequential`；`FashionMLP` 是 LightningModule，网络存放在它的
# `model.net` 里，文档的训练配方是它的默认参数，权重初始化与 Keras 相同（glorot-uniform 权重、零偏置）。和
# 文档里的模型一样，它输出 logits，损失用基于 logits 的交叉熵（Keras：`from_logits=True`）。

# %%
show_source(FashionMLPNet, FashionMLP)
model = FashionMLP()
print(report.keras_summary(model.net, model.name))

# %% [markdown] lang="en"
# ## 3. Compile it
#
# Keras: `model.compile(optimizer="adam", loss=SparseCategoricalCrossentropy(from_logits=True),
# metrics=["accuracy"])`. Keras' `compile` compiles no code itself: it records the optimizer, the loss and the
# metrics for `fit` (its `jit_compile` option decides whether `fit` has XLA compile the step, which Keras 3
# does by default where it can). mnist_lit compiles nothing: its step runs as the Python below.
#
# In Lightning these are methods of the LightningModule, shared by the five tutorials. The training step,
# line by line:
#
# - `x, y = batch`: a batch from the DataModule, images divided by 255, and their class indices;
# - `logits = self(x)`: the forward pass, 10 logits per image;
# - `loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)`: sparse categorical
#   cross-entropy on logits, the mean over the batch;
# - `self.metrics[f"{stage}_acc"].update(logits.detach(), y)`: the epoch's accuracy (and loss) add this
#   batch; the logger records them once per epoch;
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
# rescaled before every step, so that it computes Keras' update. [dense512](dense512.md) walks through
# these methods at more length.

# %% [markdown] lang="zh"
# ## 3. 编译模型
#
# Keras：`model.compile(optimizer="adam", loss=SparseCategoricalCrossentropy(from_logits=True),
# metrics=["accuracy"])`。Keras 的 `compile` 本身并不编译代码，它只是记下 `fit` 要用的优化器、损失和指标
# （它的 `jit_compile` 选项决定 `fit` 是否让 XLA 编译训练步，Keras 3 在可行时默认这样做）。mnist_lit 不编译
# 任何东西，训练步就按下面的 Python 代码执行。
#
# 在 Lightning 里，这些都是 LightningModule 的方法，五个教程共用。训练步逐行来看：
#
# - `x, y = batch`：数据模块给的一个批量，图片已除以 255，标签是类别编号；
# - `logits = self(x)`：前向传播，每张图片得到 10 个 logits；
# - `loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)`：基于 logits 的稀疏分类交叉熵，
#   对批量取平均；
# - `self.metrics[f"{stage}_acc"].update(logits.detach(), y)`：把这个批量计入本轮的准确率（损失也一样），
#   日志记录器每轮记录一次；
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
# 与 Keras 相同。[dense512](dense512.md) 一页对这些方法讲得更详细。

# %%
show_source(Tutorial.step, Tutorial.training_step, Tutorial.configure_optimizers)
print(model.configure_optimizers())

# %% [markdown] lang="en"
# ## 4. Fit it
#
# Keras: `model.fit(train_images, train_labels, epochs=10)`. The Lightning `Trainer` runs the loop, the
# `CSVLogger` keeps the metrics (Keras' `History`) and `EpochLine`, mnist_lit's progress callback,
# prints Keras' line per epoch.

# %% [markdown] lang="zh"
# ## 4. 训练
#
# Keras：`model.fit(train_images, train_labels, epochs=10)`。训练循环由训练器执行，`CSVLogger` 记录指标
# （相当于 Keras 的 `History`），mnist_lit 的进度回调 `EpochLine` 每轮打印一行 Keras 风格的输出。

# %%
logger = CSVLogger(OUT, name="logs")  # OUT/logs/version_0/metrics.csv, one row per epoch
trainer = L.Trainer(max_epochs=EPOCHS, logger=logger, callbacks=[EpochLine()],
                    enable_checkpointing=False,  # Keras' fit writes no checkpoint either
                    enable_model_summary=False)  # the summary was printed above, Keras' way
trainer.fit(model, datamodule=dm)

# %% [markdown] lang="en"
# ## 5. Evaluate it
#
# Keras: `test_loss, test_acc = model.evaluate(test_images, test_labels, verbose=2)`. The docs point
# at the gap between this and the last epoch's training accuracy as overfitting: compare the two lines.

# %% [markdown] lang="zh"
# ## 5. 评估
#
# Keras：`test_loss, test_acc = model.evaluate(test_images, test_labels, verbose=2)`。文档指出，测试准确率
# 比最后一轮的训练准确率低，这个差距就是过拟合。可以对比上面最后一轮的输出和下面这一行。

# %%
results = trainer.test(model, datamodule=dm, verbose=False)[0]
print(f"Test: loss: {results['test_loss']:.4f} - acc: {results['test_acc']:.4f}")

# %%
history = report.logged_history(logger.log_dir)  # metrics.csv as Keras' history.history
for lang in LANGS:
    report.plot_curves(history, OUT / f"curves_{lang}.png", test=results, lang=lang)
    show(OUT / f"curves_{lang}.png", lang)

# %% [markdown] lang="en"
# ## 6. Make predictions
#
# Keras: the docs wrap the model in `keras.Sequential([model, layers.Softmax()])` and call `predict`.
# `trainer.predict` runs the module's `predict_step`, which is that softmax over the logits. Which
# garments are mistaken for which: true class in rows, predicted in columns, each class's accuracy on
# the left.

# %% [markdown] lang="zh"
# ## 6. 预测
#
# 文档把模型包进 `keras.Sequential([model, layers.Softmax()])`，再调用 `predict`。`trainer.predict` 运行
# 模块的 `predict_step`，做的就是对 logits 取 softmax。下面的混淆矩阵显示哪类衣服被认成了哪类，行是真实
# 类别，列是预测类别，左边括号里是每个类别的准确率。

# %%
probs = torch.cat(trainer.predict(model, datamodule=dm))  # 10000 x 10
predicted = probs.argmax(1)
matrix = confusion_matrix(predicted, test_labels, task="multiclass", num_classes=10)
for lang in LANGS:
    report.plot_confusion(matrix.tolist(), NAMES[lang], OUT / f"confusion_{lang}.png", results["test_acc"], lang=lang)
    show(OUT / f"confusion_{lang}.png", lang)

# %% [markdown] lang="en"
# Each image below with its ten probabilities: the predicted class's bar blue when it is right, red when
# it is wrong, the true class's bar outlined.

# %% [markdown] lang="zh"
# 下面每张图片的下方是它的十个概率。预测类别的柱子，预测对了是蓝色，错了是红色；真实类别的柱子加了黑框。

# %%
TRUE = {"en": "(true: {})", "zh": "（实为{}）"}
for lang in LANGS:
    fig = Figure(figsize=(12, 5.5), layout="constrained")
    for k, (image_ax, bar_ax) in enumerate(fig.subplots(2, 6).T):
        truth, guess = int(test_labels[k]), int(predicted[k])
        image_ax.imshow(test_images[k, 0], cmap="gray")
        image_ax.axis("off")
        image_ax.set_title(f"{NAMES[lang][guess]} {probs[k, guess]:.0%}\n{TRUE[lang].format(NAMES[lang][truth])}",
                           fontsize=8, color="tab:blue" if guess == truth else "red")
        bars = bar_ax.bar(range(10), probs[k], color="lightgray")
        bars[guess].set_color("tab:blue" if guess == truth else "red")
        bars[truth].set_edgecolor("black")
        bar_ax.set_ylim(0, 1)
        bar_ax.set_xticks(range(10), NAMES[lang], rotation=90, fontsize=7)
    fig.savefig(OUT / f"predictions_{lang}.png", dpi=80)
    show(OUT / f"predictions_{lang}.png", lang)

# %% [markdown] lang="en"
# The twelve mistakes the network is surest of, out of all 10,000 test images, most confident first.

# %% [markdown] lang="zh"
# 下面是 10,000 张测试图片里网络错得最有把握的 12 张，按它给错误答案的概率从高到低排列。

# %%
confidence = probs.max(1).values
wrong = (predicted != test_labels).nonzero().flatten()
worst = wrong[confidence[wrong].argsort(descending=True)][:12]
for lang in LANGS:
    report.plot_misclassified(test_images[worst], [NAMES[lang][int(t)] for t in test_labels[worst]],
                              [NAMES[lang][int(p)] for p in predicted[worst]], confidence[worst].tolist(),
                              OUT / f"mistakes_{lang}.png", lang=lang)
    show(OUT / f"mistakes_{lang}.png", lang)
