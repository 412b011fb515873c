"""Keras "hello world" (Deep Learning with Python, ch. 2): Dense 512 relu, Dense 10; ~98% test accuracy."""

from torch import nn

from mnist_lit.models.base import Optimizer, Tutorial


class Dense512Net(nn.Sequential):
    """Flatten, Dense(512, relu), Dense(10): 407,050 parameters."""

    def __init__(self) -> None:
        super().__init__(
            nn.Flatten(),                      # N x 784
            nn.Linear(784, 512), nn.ReLU(),
            nn.Linear(512, 10),                # logits; Keras' softmax is applied by the loss / export
        )


class Dense512(Tutorial):
    """RMSprop, categorical cross-entropy, 5 epochs of batch 128."""

    name = "dense512"

    def __init__(self, optimizer: Optimizer = "rmsprop", **kwargs) -> None:
        super().__init__(Dense512Net(), optimizer=optimizer, **kwargs)
