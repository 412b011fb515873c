# %% [markdown]
# # dense512: the Keras "hello world", in Lightning
#
# The first network of Chollet's *Deep Learning with Python* (chapter 2): each 28 x 28 image flattened
# to 784 numbers, a Dense layer of 512 ReLU units, a Dense layer of 10 classes; RMSprop, 5 epochs of
# batches of 128. The book reports about 98% test accuracy; the run on this page printed 0.9794.
#
# The steps follow the book's order, and each names the Keras call it replaces. This file is a jupytext
# `py:percent` script: plain Python that opens as a notebook (`jupytext --to ipynb dense512.py` writes
# the .ipynb). `make docs` executes it and writes `dense512.md` with its outputs.
#
# `MNIST_LIT_TUTORIAL_EPOCHS=1` trains 1 epoch instead of 5 (the tests set it); unset, the published
# recipe runs in full.

# %%
import os
from pathlib import Path

import lightning as L
from IPython.display import Image, display

from mnist_lit import report
from mnist_lit.callbacks import EpochLine, RunRecorder, quiet_lightning
from mnist_lit.data import MNISTDataModule
from mnist_lit.models import Dense512

EPOCHS = min(5, int(os.environ.get("MNIST_LIT_TUTORIAL_EPOCHS", 5)))
OUT = Path("checkpoints/tutorials/dense512")  # figures go here, under the working directory
OUT.mkdir(parents=True, exist_ok=True)
quiet_lightning()  # the Lightning tips and warnings the CLI silences too
L.seed_everything(0)  # the CLI's default seed, so this run starts where `fit --config dense512` does


def show(path):  # a figure mnist_lit wrote, shown in the notebook
    display(Image(filename=str(path)))


# %% [markdown]
# ## 1. Load the data and look at it
#
# Keras: `keras.datasets.mnist.load_data()` hands back four numpy arrays. Here a LightningDataModule
# owns the data and serves batches to the Trainer. `MNISTDataModule` finds the four MNIST files (the
# repo ships them in `data/MNIST/raw`, so nothing is downloaded) and keeps the images as uint8 tensors
# laid out channels-first, N x 1 x 28 x 28, the order PyTorch's layers expect (Keras: N x 28 x 28).
# Labels stay class indices 0-9: the loss below takes indices, so there is no `to_categorical`.

# %%
dm = MNISTDataModule(batch_size=128)  # the batch size Keras passes to model.fit
dm.prepare_data()
dm.setup("fit")
loader = dm.train_dataloader()
images, labels = next(iter(loader))  # one shuffled batch, as training will see it
print(f"{len(loader)} batches of {dm.hparams.batch_size}; one batch: {tuple(images.shape)} {images.dtype}")
show(report.plot_images(images[:16], [str(int(y)) for y in labels[:16]], OUT / "train_images.png"))

# %% [markdown]
# ## 2. Build the network
#
# Keras: `keras.Sequential([layers.Dense(512, activation="relu"), layers.Dense(10, activation="softmax")])`
# and `model.summary()`. The book first reshapes the images to 60000 x 784; here the network's first
# layer, `nn.Flatten`, does that to each batch.
#
# `Dense512` is a LightningModule: the plain network (`model.net`, an `nn.Sequential` in Keras' layer
# order) together with its training recipe. Its weights start as Keras' do (glorot-uniform, zero
# biases). The last layer has no softmax: the network returns logits, and the loss is cross-entropy on
# logits, which equals softmax followed by categorical cross-entropy but is computed in one stable
# step (log-softmax). Softmax comes back wherever probabilities are asked for (predict, exports).

# %%
model = Dense512()
print(report.keras_summary(model.net, model.name))

# %% [markdown]
# ## 3. Compile it
#
# Keras: `model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])`.
#
# In Lightning the optimizer, loss and metrics belong to the module: `Dense512()` defaults to
# `optimizer="rmsprop", lr=1e-3`, its steps compute cross-entropy and accuracy, and
# `configure_optimizers` builds the optimizer. That is `KerasRMSprop` (`mnist_lit/optim.py`), not
# `torch.optim.RMSprop`: Keras adds eps inside the square root, `w -= lr * g / sqrt(v + eps)`, torch
# outside it, `sqrt(v) + eps`, and the weights of the two drift apart within a few steps.

# %%
print(model.configure_optimizers())

# %% [markdown]
# ## 4. Fit it
#
# Keras: `model.fit(train_images, train_labels, epochs=5, batch_size=128)`, after
# `train_images.astype("float32") / 255`.
#
# A Lightning `Trainer` runs the loop; the DataModule divides each batch by 255 once it is on the
# device (`on_after_batch_transfer`), with no mean or standard deviation, as the book does.
# `EpochLine` prints Keras' line per epoch and `RunRecorder` keeps each epoch's metrics, as Keras'
# `History` does.

# %%
history = RunRecorder()
trainer = L.Trainer(max_epochs=EPOCHS, callbacks=[EpochLine(), history],
                    logger=False, enable_checkpointing=False,  # Keras' fit writes no files either
                    enable_model_summary=False)  # the summary was printed above, Keras' way
trainer.fit(model, datamodule=dm)

# %% [markdown]
# ## 5. Evaluate it
#
# Keras: `test_loss, test_acc = model.evaluate(test_images, test_labels)`.

# %%
results = trainer.test(model, datamodule=dm, verbose=False)[0]
print(f"Test: loss: {results['test_loss']:.4f} - acc: {results['test_acc']:.4f}")

# %% [markdown]
# ## 6. Plot the curves
#
# Keras: `history.history["loss"]` and `["accuracy"]` drawn with matplotlib. The book trains without
# validation data, so there is one curve per metric; the dotted line is the test result above.

# %%
report.plot_curves(history.history, OUT / "curves.png", test=results)
Image(filename=str(OUT / "curves.png"))

# %% [markdown]
# Where the test errors fall: true class in rows, predicted class in columns (`trainer.test` leaves
# the counts in `model.confusion_matrix`).

# %%
report.plot_confusion(model.confusion_matrix.tolist(), list(dm.classes), OUT / "confusion.png", results["test_acc"])
Image(filename=str(OUT / "confusion.png"))

# %% [markdown]
# ## 7. Predict
#
# Keras: `model.predict(test_images[:16])` gives each image's 10 probabilities. `report.predict_probs`
# does the same on uint8 images: divides by 255, runs the network, applies softmax. Each title reads
# predicted (true); red marks a mistake.

# %%
test_images, test_labels = dm.test_set()
predicted = report.predict_probs(model.net, test_images[:16]).argmax(1)
show(report.plot_images(test_images[:16], [f"{p} (true {t})" for p, t in zip(predicted.tolist(), test_labels.tolist())],
                        OUT / "predictions.png", wrong=[k for k in range(16) if predicted[k] != test_labels[k]]))
