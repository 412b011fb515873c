"""TF2 tutorial: Dense 16, Dense 16, Dropout 0.2, Dense 10, with the test set as validation data."""

from jsonargparse.typing import restricted_number_type
from torch import nn

from mnist_lit.models.base import Optimizer, Tutorial


DropoutRate = restricted_number_type("DropoutRate", float, [(">=", 0), ("<", 1)])


class TinyMLPNet(nn.Sequential):
    """Flatten, Dense(16, relu), Dense(16, relu), Dropout, Dense(10): 13,002 parameters."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__(
            nn.Flatten(),
            nn.Linear(784, 16), nn.ReLU(),
            nn.Linear(16, 16), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(16, 10),
        )


class TinyMLP(Tutorial):
    """Adam, 20 epochs of batch 32."""

    name = "tiny_mlp"

    def __init__(self, optimizer: Optimizer = "adam", dropout: DropoutRate = 0.2, **kwargs) -> None:
        """
        Args:
            dropout: rate of the Dropout layer before the output.
        """
        super().__init__(TinyMLPNet(dropout), optimizer=optimizer, **kwargs)
