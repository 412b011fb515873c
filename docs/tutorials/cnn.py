# %% [markdown]
# # cnn: the Keras convolutional network, in Lightning
#
# The Keras CNN tutorial: three blocks of a 3 x 3 convolution with ReLU and a 2 x 2 max-pool (32, 64
# and 64 filters), then Dense layers of 64, 500 and 10; RMSprop, 10 epochs of batches of 128. The
# tutorial reports 98.68% test accuracy; the run on this page printed 0.9880.
#
# The steps follow the tutorial's order, and each names the Keras call it replaces. This file is a
# jupytext `py:percent` script: plain Python that opens as a notebook (`jupytext --to ipynb cnn.py`
# writes the .ipynb). `make docs` executes it and writes `cnn.md` with its outputs.
#
# `MNIST_LIT_TUTORIAL_EPOCHS=1` trains 1 epoch instead of 10 (the tests set it); unset, the published
# recipe runs in full.

# %%
import os
from pathlib import Path

import lightning as L
from IPython.display import Image, display

from mnist_lit import report
from mnist_lit.callbacks import EpochLine, RunRecorder, quiet_lightning
from mnist_lit.data import MNISTDataModule
from mnist_lit.models import CNN

EPOCHS = min(10, int(os.environ.get("MNIST_LIT_TUTORIAL_EPOCHS", 10)))
OUT = Path("checkpoints/tutorials/cnn")  # figures go here, under the working directory
OUT.mkdir(parents=True, exist_ok=True)
quiet_lightning()  # the Lightning tips and warnings the CLI silences too
L.seed_everything(0)  # the CLI's default seed, so this run starts where `fit --config cnn` does


def show(path):  # a figure mnist_lit wrote, shown in the notebook
    display(Image(filename=str(path)))


# %% [markdown]
# ## 1. Load the data and look at it
#
# Keras: `keras.datasets.mnist.load_data()`, then `reshape((60000, 28, 28, 1))` to give the
# convolutions a channel axis. `MNISTDataModule` finds the MNIST files the repo ships in
# `data/MNIST/raw` and serves batches that already have one: N x 1 x 28 x 28, channels first, as
# PyTorch's `Conv2d` takes them (Keras puts the channel last, N x 28 x 28 x 1). On the CPU mnist_lit
# keeps the convolutions' memory in channels-last order for speed; the tensors' shape does not change.
# Labels stay class indices 0-9: the loss takes indices, so there is no `to_categorical`.

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
# Keras: `layers.Conv2D(32, (3, 3), activation="relu")`, `layers.MaxPooling2D((2, 2))` and so on,
# `layers.Flatten()`, `layers.Dense(64, activation="relu")`, `layers.Dense(500, activation="relu")`,
# `layers.Dense(10, activation="softmax")`; then `model.summary()`.
#
# `CNN` is a LightningModule holding the plain network (`model.net`, an `nn.Sequential` written in
# Keras' order: convolution, ReLU, pool) and its training recipe. Weights start as Keras' do
# (glorot-uniform, zero biases), so the parameter count matches Keras' summary. The last layer returns
# logits, with no softmax: the loss is cross-entropy on logits, the same value as softmax followed by
# categorical cross-entropy, computed in one stable step. (When training, mnist_lit applies each ReLU
# after its pool: the same numbers, on a quarter of the values.)

# %%
model = CNN()
print(report.keras_summary(model.net, model.name))

# %% [markdown]
# ## 3. Compile it
#
# Keras: `model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])`.
#
# The module holds the optimizer, loss and metrics: `CNN()` defaults to `optimizer="rmsprop", lr=1e-3`,
# and `configure_optimizers` builds `KerasRMSprop` (`mnist_lit/optim.py`), which adds eps inside the
# square root as Keras does, `w -= lr * g / sqrt(v + eps)`; `torch.optim.RMSprop` adds it outside,
# `sqrt(v) + eps`, and its weights drift away from Keras' within a few steps.

# %%
print(model.configure_optimizers())

# %% [markdown]
# ## 4. Fit it
#
# Keras: `model.fit(train_images, train_labels, epochs=10, batch_size=128)`, the images divided by 255
# beforehand.
#
# The Lightning `Trainer` runs the loop. The DataModule divides each batch by 255 on the device
# (`on_after_batch_transfer`), with no mean or standard deviation, as the tutorial does. `EpochLine`
# prints Keras' line per epoch; `RunRecorder` keeps the metrics, as Keras' `History` does.

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
# Keras: the lists in `history.history`, drawn with matplotlib. The tutorial keeps no validation data,
# so each metric has its training curve; the dotted line is the test result above.

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
# Keras: `model.predict(test_images[:16])`, each image's 10 probabilities. `report.predict_probs` does
# the same on uint8 images (divide by 255, run the network, softmax). Each title reads predicted
# (true); red marks a mistake.

# %%
test_images, test_labels = dm.test_set()
predicted = report.predict_probs(model.net, test_images[:16]).argmax(1)
show(report.plot_images(test_images[:16], [f"{p} (true {t})" for p, t in zip(predicted.tolist(), test_labels.tolist())],
                        OUT / "predictions.png", wrong=[k for k in range(16) if predicted[k] != test_labels[k]]))

# %% [markdown]
# The mistakes the network is surest of, out of all 10,000 test images:

# %%
index, predicted, confidence = report.worst_mistakes(model.net, test_images, test_labels, k=12)
report.plot_misclassified(test_images[index], [str(int(t)) for t in test_labels[index]],
                          [str(int(p)) for p in predicted], confidence.tolist(), OUT / "mistakes.png")
Image(filename=str(OUT / "mistakes.png"))
