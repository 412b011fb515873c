"""Keras CNN tutorial: three Conv 3x3 + MaxPool blocks, then Dense 64, 500, 10; 98.68% published."""

from torch import nn

from mnist_lit.models.base import Optimizer, Tutorial


class CNNNet(nn.Sequential):
    """Conv(32)-Pool, Conv(64)-Pool, Conv(64)-Pool, Flatten, Dense 64, 500, 10: 97,414 parameters.

    In Keras' order: each convolution's ReLU, then its MaxPool.
    """

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),   # 32 x 13 x 13 ('valid' padding, as Keras)
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),  # 64 x 5 x 5
            nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),  # 64 x 1 x 1
            nn.Flatten(),                                      # 64
            nn.Linear(64, 64), nn.ReLU(),
            nn.Linear(64, 500), nn.ReLU(),
            nn.Linear(500, 10),
        )


class CNN(Tutorial):
    """RMSprop, 10 epochs of batch 128."""

    name = "cnn"

    def __init__(self, optimizer: Optimizer = "rmsprop", **kwargs) -> None:
        super().__init__(CNNNet(), optimizer=optimizer, **kwargs)
