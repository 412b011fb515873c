"""TF2 "basic classification" on Fashion-MNIST: Dense 128 relu, Dense 10; 87.77% published."""

from jsonargparse.typing import PositiveInt
from torch import nn

from mnist_lit.data import DatasetName
from mnist_lit.models.base import Optimizer, Tutorial


class FashionMLPNet(nn.Sequential):
    """Flatten, Dense(units, relu), Dense(10): 101,770 parameters at the tutorial's 128 units."""

    def __init__(self, units: int = 128) -> None:
        super().__init__(nn.Flatten(), nn.Linear(784, units), nn.ReLU(), nn.Linear(units, 10))


class FashionMLP(Tutorial):
    """Adam, 10 epochs of batch 32, on Fashion-MNIST."""

    name = "fashion_mlp"

    def __init__(self, optimizer: Optimizer = "adam", dataset: DatasetName = "fashion_mnist",
                 units: PositiveInt = 128, **kwargs) -> None:
        """
        Args:
            units: width of the hidden Dense layer (the tutorial's 128; KerasTuner's tutorial searches 32-512).
        """
        super().__init__(FashionMLPNet(units), optimizer=optimizer, dataset=dataset, **kwargs)
