# %% [markdown]
# # fashion_mlp: TF2's basic classification of clothing, in Lightning
#
# The TF2 docs' first classifier, on Fashion-MNIST (28 x 28 grey photos of ten kinds of clothing, the
# same format as MNIST): each image flattened, a Dense layer of 128 ReLU units, a Dense layer of 10
# logits; Adam, 10 epochs of batches of 32. The docs report 87.77% test accuracy; the run on this page
# printed 0.8824.
#
# The steps follow the docs' order, and each names the Keras call it replaces. This file is a jupytext
# `py:percent` script: plain Python that opens as a notebook (`jupytext --to ipynb fashion_mlp.py`
# writes the .ipynb). `make docs` executes it and writes `fashion_mlp.md` with its outputs.
# Fashion-MNIST does not ship in the repo: `apt-get install dataset-fashion-mnist`, or put its four
# `.gz` files in `data/FashionMNIST/raw/`.
#
# `MNIST_LIT_TUTORIAL_EPOCHS=1` trains 1 epoch instead of 10 (the tests set it); unset, the published
# recipe runs in full.

# %%
import os
from pathlib import Path

import lightning as L
from IPython.display import Image, display
from matplotlib.figure import Figure

from mnist_lit import report
from mnist_lit.callbacks import EpochLine, RunRecorder, quiet_lightning
from mnist_lit.data import MNISTDataModule
from mnist_lit.models import FashionMLP

EPOCHS = min(10, int(os.environ.get("MNIST_LIT_TUTORIAL_EPOCHS", 10)))
OUT = Path("checkpoints/tutorials/fashion_mlp")  # figures go here, under the working directory
OUT.mkdir(parents=True, exist_ok=True)
quiet_lightning()  # the Lightning tips and warnings the CLI silences too
L.seed_everything(0)  # the CLI's default seed, so this run starts where `fit --config fashion_mlp` does


def show(path):  # a figure mnist_lit wrote, shown in the notebook
    display(Image(filename=str(path)))


# %% [markdown]
# ## 1. Load the data and look at it
#
# Keras: `keras.datasets.fashion_mnist.load_data()` and a list of the ten class names written out by
# hand. `MNISTDataModule(dataset="fashion_mnist")` finds the four files (your `data/` folder first,
# then Debian's package) and names the classes itself, in `dm.classes`. Its images are uint8,
# N x 1 x 28 x 28, channels first as PyTorch's layers take them (Keras' arrays: N x 28 x 28).

# %%
dm = MNISTDataModule(dataset="fashion_mnist", batch_size=32)  # Keras' default batch for model.fit
dm.prepare_data()
dm.setup("fit")
print(dm.classes)
test_images, test_labels = dm.test_set()
print(f"{len(dm.train_dataloader())} batches of {dm.hparams.batch_size}; test images {tuple(test_images.shape)}")

# %% [markdown]
# The docs look at one image's pixels before scaling them: values from 0 to 255. They are divided by
# 255 (Keras: `train_images / 255.0`) by the DataModule, once each batch is on the device, with no mean
# or standard deviation.

# %%
fig = Figure(figsize=(3.6, 3), layout="constrained")
ax = fig.subplots()
fig.colorbar(ax.imshow(test_images[0, 0], cmap="gray"), ax=ax)
ax.set_title(dm.classes[int(test_labels[0])])
fig.savefig(OUT / "one_image.png", dpi=80)
Image(filename=str(OUT / "one_image.png"))

# %%
images, labels = next(iter(dm.train_dataloader()))  # one shuffled batch, as training will see it
show(report.plot_images(images[:24], [dm.classes[int(y)] for y in labels[:24]], OUT / "train_images.png", size=(1.5, 1.6), fontsize=8))

# %% [markdown]
# ## 2. Build the network
#
# Keras: `keras.Sequential([layers.Flatten(input_shape=(28, 28)), layers.Dense(128, activation="relu"),
# layers.Dense(10)])` and `model.summary()`.
#
# `FashionMLP` is a LightningModule: the plain network (`model.net`, Keras' layer order) and its
# training recipe, with Keras' initial weights (glorot-uniform, zero biases). Like the docs' model, it
# ends in logits, and the loss is cross-entropy on logits (Keras: `from_logits=True`).

# %%
model = FashionMLP()
print(report.keras_summary(model.net, model.name))

# %% [markdown]
# ## 3. Compile it
#
# Keras: `model.compile(optimizer="adam", loss=SparseCategoricalCrossentropy(from_logits=True),
# metrics=["accuracy"])`.
#
# The module holds the optimizer, loss and metrics; `configure_optimizers` builds `KerasAdam`
# (`mnist_lit/optim.py`). Keras and torch put Adam's eps (1e-7 here) in different places relative to
# the bias correction; `KerasAdam` is torch's Adam with its eps rescaled before every step, so that it
# computes Keras' update.

# %%
print(model.configure_optimizers())

# %% [markdown]
# ## 4. Fit it
#
# Keras: `model.fit(train_images, train_labels, epochs=10)`. The Lightning `Trainer` runs the loop,
# `EpochLine` prints Keras' line per epoch and `RunRecorder` keeps the metrics (Keras' `History`).

# %%
history = RunRecorder()
trainer = L.Trainer(max_epochs=EPOCHS, callbacks=[EpochLine(), history],
                    logger=False, enable_checkpointing=False,  # Keras' fit writes no files either
                    enable_model_summary=False)  # the summary was printed above, Keras' way
trainer.fit(model, datamodule=dm)

# %% [markdown]
# ## 5. Evaluate it
#
# Keras: `test_loss, test_acc = model.evaluate(test_images, test_labels, verbose=2)`. The docs point
# at the gap between this and the last epoch's training accuracy as overfitting: compare the two lines.

# %%
results = trainer.test(model, datamodule=dm, verbose=False)[0]
print(f"Test: loss: {results['test_loss']:.4f} - acc: {results['test_acc']:.4f}")

# %%
report.plot_curves(history.history, OUT / "curves.png", test=results)
Image(filename=str(OUT / "curves.png"))

# %% [markdown]
# Which garments are mistaken for which: true class in rows, predicted in columns, each class's
# accuracy on the left (`trainer.test` leaves the counts in `model.confusion_matrix`). On this page's
# run shirts are read worst, mostly as T-shirts, pullovers and coats; bags and trousers best.

# %%
report.plot_confusion(model.confusion_matrix.tolist(), list(dm.classes), OUT / "confusion.png", results["test_acc"])
Image(filename=str(OUT / "confusion.png"))

# %% [markdown]
# ## 6. Make predictions
#
# Keras: the docs wrap the model in `keras.Sequential([model, layers.Softmax()])` and call `predict`.
# `report.predict_probs` is that softmax over the logits, on uint8 images (it divides by 255 itself).
# Each image below with its ten probabilities: the predicted class's bar blue when it is right, red when
# it is wrong, the true class's bar outlined.

# %%
probs = report.predict_probs(model.net, test_images[:6])
fig = Figure(figsize=(12, 5), layout="constrained")
for k, (image_ax, bar_ax) in enumerate(fig.subplots(2, 6).T):
    truth, guess = int(test_labels[k]), int(probs[k].argmax())
    image_ax.imshow(test_images[k, 0], cmap="gray")
    image_ax.axis("off")
    image_ax.set_title(f"{dm.classes[guess]} {probs[k, guess]:.0%}\n(true: {dm.classes[truth]})", fontsize=8,
                       color="tab:blue" if guess == truth else "red")
    bars = bar_ax.bar(range(10), probs[k], color="lightgray")
    bars[guess].set_color("tab:blue" if guess == truth else "red")
    bars[truth].set_edgecolor("black")
    bar_ax.set_ylim(0, 1)
    bar_ax.set_xticks(range(10), dm.classes, rotation=90, fontsize=7)
fig.savefig(OUT / "predictions.png", dpi=80)
Image(filename=str(OUT / "predictions.png"))

# %% [markdown]
# The mistakes the network is surest of, out of all 10,000 test images:

# %%
index, predicted, confidence = report.worst_mistakes(model.net, test_images, test_labels, k=12)
report.plot_misclassified(test_images[index], [dm.classes[int(t)] for t in test_labels[index]],
                          [dm.classes[int(p)] for p in predicted], confidence.tolist(), OUT / "mistakes.png")
Image(filename=str(OUT / "mistakes.png"))
