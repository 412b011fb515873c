# %% [markdown]
# # softmax_regression: TF1's "MNIST for ML beginners", in Lightning
#
# The oldest of the five: softmax regression, `y = softmax(x W + b)` with `x` the 784 pixels, `W` a
# 784 x 10 matrix and `b` 10 biases, all starting at zero; plain gradient descent at a learning rate of
# 0.001 on the cross-entropy *summed* over each batch of 64, for 2000 steps (a little over two epochs).
# The run on this page printed a test accuracy of 0.9124.
#
# TF1 had no Keras model: each step names the TF1 call it replaces, in the tutorial's order. This file
# is a jupytext `py:percent` script: plain Python that opens as a notebook (`jupytext --to ipynb
# softmax_regression.py` writes the .ipynb). `make docs` executes it and writes `softmax_regression.md`
# with its outputs.
#
# `MNIST_LIT_TUTORIAL_EPOCHS=1` stops training after 1 epoch (938 of the 2000 steps; the tests set
# it); unset, the published recipe runs in full.

# %%
import os
from pathlib import Path

import lightning as L
from IPython.display import Image, display
from matplotlib.figure import Figure

from mnist_lit import report
from mnist_lit.callbacks import EpochLine, RunRecorder, quiet_lightning
from mnist_lit.data import MNISTDataModule
from mnist_lit.models import SoftmaxRegression

MAX_EPOCHS = os.environ.get("MNIST_LIT_TUTORIAL_EPOCHS")  # None: only the 2000 steps end the run
OUT = Path("checkpoints/tutorials/softmax_regression")  # figures go here, under the working directory
OUT.mkdir(parents=True, exist_ok=True)
quiet_lightning()  # the Lightning tips and warnings the CLI silences too
L.seed_everything(0)  # the CLI's default seed, so this run shuffles as `fit --config softmax_regression` does


def show(path):  # a figure mnist_lit wrote, shown in the notebook
    display(Image(filename=str(path)))


# %% [markdown]
# ## 1. Load the data and look at it
#
# TF1: `input_data.read_data_sets("MNIST_data/", one_hot=True)`, which gave flat rows of 784 pixels in
# [0, 1], one-hot labels, and `mnist.train.next_batch(64)`. `MNISTDataModule` finds the MNIST files the
# repo ships in `data/MNIST/raw` and serves shuffled batches of uint8 images, N x 1 x 28 x 28 (channels
# first, PyTorch's layout), divided by 255 once on the device. Labels stay class indices; the loss
# takes those, not one-hot rows. TF1 kept 5,000 training images aside for validation; training here
# sees all 60,000, as `configs/softmax_regression.yaml` does.

# %%
dm = MNISTDataModule(batch_size=64)
dm.prepare_data()
dm.setup("fit")
loader = dm.train_dataloader()
images, labels = next(iter(loader))  # one shuffled batch, as training will see it
print(f"{len(loader)} batches of {dm.hparams.batch_size}; one batch: {tuple(images.shape)} {images.dtype}")
show(report.plot_images(images[:16], [str(int(y)) for y in labels[:16]], OUT / "train_images.png"))

# %% [markdown]
# ## 2. The model
#
# TF1: `W = tf.Variable(tf.zeros([784, 10]))`, `b = tf.Variable(tf.zeros([10]))` and
# `y = tf.nn.softmax(tf.matmul(x, W) + b)`.
#
# `SoftmaxRegression` is a LightningModule holding the plain network (`model.net`: `nn.Flatten`, then
# one `nn.Linear(784, 10)`, both zero at the start) and its training recipe. It returns the logits
# `x W + b`, without the softmax: see the loss below.

# %%
model = SoftmaxRegression()
print(report.keras_summary(model.net, model.name))

# %% [markdown]
# ## 3. The loss and the optimizer
#
# TF1: `cross_entropy = -tf.reduce_sum(y_ * tf.log(y))` and
# `tf.train.GradientDescentOptimizer(0.001).minimize(cross_entropy)`.
#
# The module's loss is cross-entropy on the logits, summed over the batch (`loss_reduction="sum"`):
# the same value as TF1's, but computed as a log-softmax in one step, so it never takes the log of a
# probability rounded to zero (TF1's formula turns that into NaN). Summing rather than averaging makes
# each step 64 times larger than a mean would at the same learning rate. Plain SGD computes the same
# update in TF1 and torch, so `configure_optimizers` returns `torch.optim.SGD`.

# %%
print(f"loss_reduction={model.hparams.loss_reduction!r}")
print(model.configure_optimizers())

# %% [markdown]
# ## 4. Train it
#
# TF1: `for _ in range(2000): batch_xs, batch_ys = mnist.train.next_batch(64);
# sess.run(train_step, feed_dict={x: batch_xs, y_: batch_ys})`.
#
# The Lightning `Trainer` runs the loop, stopping after `max_steps=2000` optimizer steps (the epoch line
# counts the steps of each epoch; the last epoch is a partial one). `EpochLine` prints a line per epoch,
# `RunRecorder` keeps the metrics.

# %%
history = RunRecorder()
trainer = L.Trainer(max_steps=2000, max_epochs=int(MAX_EPOCHS) if MAX_EPOCHS else None,
                    callbacks=[EpochLine(), history],
                    logger=False, enable_checkpointing=False,  # TF1's loop wrote no files either
                    enable_model_summary=False)  # the summary was printed above, Keras' way
trainer.fit(model, datamodule=dm)

# %% [markdown]
# ## 5. Evaluate it
#
# TF1: `correct_prediction = tf.equal(tf.argmax(y, 1), tf.argmax(y_, 1))`, its mean as `accuracy`, run on
# `mnist.test.images`. The loss printed is the mean per image (the sum over all 10,000, divided by
# 10,000), like the other tutorials' losses.

# %%
results = trainer.test(model, datamodule=dm, verbose=False)[0]
print(f"Test: loss: {results['test_loss']:.4f} - acc: {results['test_acc']:.4f}")

# %%
report.plot_curves(history.history, OUT / "curves.png", test=results)
Image(filename=str(OUT / "curves.png"))

# %%
report.plot_confusion(model.confusion_matrix.tolist(), list(dm.classes), OUT / "confusion.png", results["test_acc"])
Image(filename=str(OUT / "confusion.png"))

# %% [markdown]
# ## 6. What it learned
#
# Each class's column of `W` is a 28 x 28 template: a pixel's weight says how much ink there counts for
# (blue) or against (red) that digit. The tutorial drew these; here they come from `model.net[1].weight`
# (torch stores it as 10 x 784, the transpose of TF1's `W`).

# %%
weights = model.net[1].weight.detach().reshape(10, 28, 28)
limit = float(weights.abs().max())
fig = Figure(figsize=(12, 1.9), layout="constrained")
for digit, ax in enumerate(fig.subplots(1, 10)):
    ax.imshow(weights[digit], cmap="RdBu", vmin=-limit, vmax=limit)
    ax.set_title(str(digit))
    ax.axis("off")
fig.savefig(OUT / "weights.png", dpi=80)
Image(filename=str(OUT / "weights.png"))

# %% [markdown]
# Predictions on the first test images (TF1: `sess.run(y, feed_dict={x: ...})`). Each title reads
# predicted (true); red marks a mistake.

# %%
test_images, test_labels = dm.test_set()
predicted = report.predict_probs(model.net, test_images[:16]).argmax(1)
show(report.plot_images(test_images[:16], [f"{p} (true {t})" for p, t in zip(predicted.tolist(), test_labels.tolist())],
                        OUT / "predictions.png", wrong=[k for k in range(16) if predicted[k] != test_labels[k]]))
