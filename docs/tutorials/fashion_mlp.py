# %% [markdown] lang="en"
# # fashion_mlp: TF2's basic classification of clothing, in Lightning
#
# [中文](zh/fashion_mlp.md)
#
# The TF2 docs' first classifier, on Fashion-MNIST (28 x 28 grey photos of ten kinds of clothing, the
# same format as MNIST): each image flattened, a Dense layer of 128 ReLU units, a Dense layer of 10
# logits; Adam, 10 epochs of batches of 32. The docs report 87.77% test accuracy; mnist_lit reaches
# 0.8824 with seed 0 (the README's table), and the `Test:` line below is this page's own run.
#
# The steps follow the docs' order, and each names the Keras call it replaces. The code is plain
# Lightning (`L.Trainer`, a `CSVLogger`) around mnist_lit's LightningModule, whose source is shown as it
# is. This file is a jupytext `py:percent` script: plain Python that opens as a notebook (`make notebook`,
# see the README). `make docs` executes it and writes this page with its outputs. The figures name each
# class in English and in Chinese, so that one set of figures serves both pages.
#
# `MNIST_LIT_TUTORIAL_EPOCHS=1` trains 1 epoch instead of 10 (the tests set it); unset, the published
# recipe runs in full.

# %% [markdown] lang="zh"
# # fashion_mlp：TF2 文档里的服装图像分类，用 Lightning 来写
#
# [English](../fashion_mlp.md) · [术语对照](../../glossary.md)
#
# TF2 文档里的第一个分类器，数据是 Fashion-MNIST（十类服装的 28 x 28 灰度照片，格式与 MNIST 相同）：把每张
# 图片展平，接一个 128 个单元、ReLU 激活的 Dense 层，再接一个输出 10 个 logits 的 Dense 层；优化器用 Adam，
# 批量大小 32，训练 10 轮。文档给出的测试准确率是 87.77%；mnist_lit 在随机种子 0 下得到 0.8824（见 README
# 的表格），下面 `Test:` 那一行是本页这次运行的结果。
#
# 本页按文档的顺序一步一步来，每一步都说明它替代的是哪个 Keras 调用。代码是普通的 Lightning 写法
# （`L.Trainer`、`CSVLogger`），训练逻辑在 mnist_lit 的 LightningModule 里，页面上直接显示它的源代码。
# 代码与英文版共用，所以注释和输出是英文的；术语见[术语对照](../../glossary.md)。图中的类别名同时写了
# 英文和中文，两种语言的页面用的是同一组图。源文件 `fashion_mlp.py` 是 jupytext 的 `py:percent` 脚本，
# 也能当作 notebook 打开（`make notebook`，见 README）；`make docs` 运行它并生成本页。
#
# 设置 `MNIST_LIT_TUTORIAL_EPOCHS=1` 只训练 1 轮而不是 10 轮（测试就是这样做的）；不设置时按文档完整训练。

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


def show(path):  # a figure written to a file, shown in the notebook
    display(Image(filename=str(path)))


def show_source(*objects):  # mnist_lit's code as it is now: read when the notebook runs, never a copy
    display(Markdown("\n\n".join(f"```python\n{textwrap.dedent(inspect.getsource(o)).rstrip()}\n```"
                                 for o in objects)))


# %% [markdown] lang="en"
# ## 1. Load the data and look at it
#
# Keras: `keras.datasets.fashion_mnist.load_data()` and a list of the ten class names written out by
# hand. `MNISTDataModule(dataset="fashion_mnist")` finds the four files (the repo ships them in
# `data/FashionMNIST/raw`; Debian's package or a download serve too) and names the classes itself, in
# `dm.classes`. Its images are uint8, N x 1 x 28 x 28, channels first as PyTorch's layers take them
# (Keras' arrays: N x 28 x 28). `ZH` below gives each class its Chinese name, for the figures.

# %% [markdown] lang="zh"
# ## 1. 读入数据，看一看
#
# Keras：`keras.datasets.fashion_mnist.load_data()`，再手写一个十个类别名的列表。
# `MNISTDataModule(dataset="fashion_mnist")` 会找到四个数据文件（仓库的
# `data/FashionMNIST/raw` 里有一份；Debian 的软件包或下载也可以），类别名也由它给出，在 `dm.classes` 里。图片是
# uint8，形状 N x 1 x 28 x 28，通道在前，这是 PyTorch 各层要求的格式（Keras 的数组是 N x 28 x 28）。
# 下面的 `ZH` 给每个类别配上中文名，用在图里。

# %%
dm = MNISTDataModule(dataset="fashion_mnist", batch_size=32)  # Keras' default batch for model.fit
dm.prepare_data()
dm.setup("fit")
ZH = {"T-shirt/top": "T恤/上衣", "Trouser": "裤子", "Pullover": "套头衫", "Dress": "连衣裙", "Coat": "外套",
      "Sandal": "凉鞋", "Shirt": "衬衫", "Sneaker": "运动鞋", "Bag": "包", "Ankle boot": "短靴"}
names = [f"{c} {ZH[c]}" for c in dm.classes]  # both languages, one set of figures
print(names)
test_images, test_labels = dm.test_set()
print(f"{len(dm.train_dataloader())} batches of {dm.hparams.batch_size}; test images {tuple(test_images.shape)}")

# %% [markdown] lang="en"
# The docs look at one image's pixels before scaling them: values from 0 to 255. They are divided by
# 255 (Keras: `train_images / 255.0`) by the DataModule, once each batch is on the device, with no mean
# or standard deviation.

# %% [markdown] lang="zh"
# 文档先看了一张图片缩放之前的像素：取值 0 到 255。除以 255 这一步（Keras：`train_images / 255.0`）由数据
# 模块在每个批量送到设备上之后完成，不减均值、不除标准差。

# %%
fig = Figure(figsize=(3.6, 3), layout="constrained")
ax = fig.subplots()
fig.colorbar(ax.imshow(test_images[0, 0], cmap="gray"), ax=ax)
ax.set_title(names[int(test_labels[0])])
fig.savefig(OUT / "one_image.png", dpi=80)
show(OUT / "one_image.png")

# %%
images, labels = next(iter(dm.train_dataloader()))  # one shuffled batch, as training will see it
show(report.plot_images(images[:24], [names[int(y)] for y in labels[:24]], OUT / "train_images.png", size=(1.5, 1.6), fontsize=8))

# %% [markdown] lang="en"
# ## 2. Build the network
#
# Keras: `keras.Sequential([layers.Flatten(input_shape=(28, 28)), layers.Dense(128, activation="relu"),
# layers.Dense(10)])` and `model.summary()`.
#
# `FashionMLPNet` is that list of layers as a plain `nn.Sequential`; `FashionMLP` is the LightningModule
# holding it as `model.net` with the docs' recipe, and Keras' initial weights (glorot-uniform, zero
# biases). Like the docs' model, it ends in logits, and the loss is cross-entropy on logits (Keras:
# `from_logits=True`).

# %% [markdown] lang="zh"
# ## 2. 搭建网络
#
# Keras：`keras.Sequential([layers.Flatten(input_shape=(28, 28)), layers.Dense(128, activation="relu"),
# layers.Dense(10)])`，再 `model.summary()`。
#
# `FashionMLPNet` 就是这几层，写成普通的 `nn.Sequential`；`FashionMLP` 是 LightningModule，把它存为
# `model.net`，并带上文档的训练配方，权重初始化与 Keras 相同（glorot-uniform 权重、零偏置）。和文档里的
# 模型一样，它输出 logits，损失是基于 logits 的交叉熵（Keras：`from_logits=True`）。

# %%
show_source(FashionMLPNet, FashionMLP)
model = FashionMLP()
print(report.keras_summary(model.net, model.name))

# %% [markdown] lang="en"
# ## 3. Compile it
#
# Keras: `model.compile(optimizer="adam", loss=SparseCategoricalCrossentropy(from_logits=True),
# metrics=["accuracy"])`.
#
# The LightningModule holds what `compile` configures: `step` computes the loss and the metrics
# (torchmetrics), `training_step` returns the loss and Lightning runs the backward pass, the optimizer's
# update and `zero_grad` around it, and `configure_optimizers` builds `KerasAdam` (`mnist_lit/optim.py`). Keras and torch put
# Adam's eps (1e-7 here) in different places relative to the bias correction; `KerasAdam` is torch's
# Adam with its eps rescaled before every step, so that it computes Keras' update. The five tutorials
# share these methods ([dense512](dense512.md) walks through them):

# %% [markdown] lang="zh"
# ## 3. 编译模型
#
# Keras：`model.compile(optimizer="adam", loss=SparseCategoricalCrossentropy(from_logits=True),
# metrics=["accuracy"])`。
#
# `compile` 配置的东西都在 LightningModule 里：`training_step` 计算损失并更新权重，`configure_optimizers`
# 创建 `KerasAdam`（`mnist_lit/optim.py`）。Adam 的 eps（这里是 1e-7）相对于偏差修正的位置，Keras 和 torch
# 不一样；`KerasAdam` 就是 torch 的 Adam，只是每步之前把 eps 换算一下，使它算出的更新与 Keras 相同。五个
# 教程共用这些方法（[dense512](dense512.md) 一页有逐条说明）：

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
# Keras：`model.fit(train_images, train_labels, epochs=10)`。训练循环由 Lightning 的 `Trainer` 执行，
# `CSVLogger` 记录指标（相当于 Keras 的 `History`），mnist_lit 的进度回调 `EpochLine` 每轮打印一行
# Keras 风格的输出。

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
# 比最后一轮的训练准确率低，这个差距就是过拟合：可以对比上下两行输出。

# %%
results = trainer.test(model, datamodule=dm, verbose=False)[0]
print(f"Test: loss: {results['test_loss']:.4f} - acc: {results['test_acc']:.4f}")

# %%
history = report.logged_history(logger.log_dir)  # metrics.csv as Keras' history.history
report.plot_curves(history, OUT / "curves.png", test=results)
show(OUT / "curves.png")

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
# Keras：文档把模型包进 `keras.Sequential([model, layers.Softmax()])`，再调用 `predict`。`trainer.predict`
# 运行模块的 `predict_step`，做的就是对 logits 取 softmax。哪类衣服被认成了哪类：行是真实类别，列是预测
# 类别，左边是每个类别的准确率。

# %%
probs = torch.cat(trainer.predict(model, datamodule=dm))  # 10000 x 10
predicted = probs.argmax(1)
matrix = confusion_matrix(predicted, test_labels, task="multiclass", num_classes=10)
report.plot_confusion(matrix.tolist(), names, OUT / "confusion.png", results["test_acc"])
show(OUT / "confusion.png")

# %% [markdown] lang="en"
# Each image below with its ten probabilities: the predicted class's bar blue when it is right, red when
# it is wrong, the true class's bar outlined.

# %% [markdown] lang="zh"
# 下面每张图片的下方是它的十个概率：预测类别的柱子，预测对了是蓝色，错了是红色；真实类别的柱子加了黑框。

# %%
fig = Figure(figsize=(12, 5.5), layout="constrained")
for k, (image_ax, bar_ax) in enumerate(fig.subplots(2, 6).T):
    truth, guess = int(test_labels[k]), int(predicted[k])
    image_ax.imshow(test_images[k, 0], cmap="gray")
    image_ax.axis("off")
    image_ax.set_title(f"{names[guess]} {probs[k, guess]:.0%}\n(true: {names[truth]})", fontsize=8,
                       color="tab:blue" if guess == truth else "red")
    bars = bar_ax.bar(range(10), probs[k], color="lightgray")
    bars[guess].set_color("tab:blue" if guess == truth else "red")
    bars[truth].set_edgecolor("black")
    bar_ax.set_ylim(0, 1)
    bar_ax.set_xticks(range(10), names, rotation=90, fontsize=7)
fig.savefig(OUT / "predictions.png", dpi=80)
show(OUT / "predictions.png")

# %% [markdown] lang="en"
# The mistakes the network is surest of, out of all 10,000 test images:

# %% [markdown] lang="zh"
# 在全部 10,000 张测试图片中，网络最有把握却判断错了的那些：

# %%
confidence = probs.max(1).values
wrong = (predicted != test_labels).nonzero().flatten()
worst = wrong[confidence[wrong].argsort(descending=True)][:12]
report.plot_misclassified(test_images[worst], [names[int(t)] for t in test_labels[worst]],
                          [names[int(p)] for p in predicted[worst]], confidence[worst].tolist(), OUT / "mistakes.png")
show(OUT / "mistakes.png")
