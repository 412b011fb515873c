"""TF2 "basic classification" on Fashion-MNIST: Dense 128 relu, Dense 10; 87.77% published."""

from torch import nn

from mnist_lit.data import DatasetName
from mnist_lit.models.base import Optimizer, Tutorial


class FashionMLPNet(nn.Sequential):
    """Flatten, Dense(128, relu), Dense(10): 101,770 parameters."""

    def __init__(self) -> None:
        super().__init__(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


class FashionMLP(Tutorial):
    """Adam, 10 epochs of batch 32, on Fashion-MNIST."""

    name = "fashion_mlp"

    def __init__(self, optimizer: Optimizer = "adam", dataset: DatasetName = "fashion_mnist", **kwargs) -> None:
        super().__init__(FashionMLPNet(), optimizer=optimizer, dataset=dataset, **kwargs)
