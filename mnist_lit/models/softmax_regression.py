"""TF1 "MNIST for ML beginners": softmax regression, y = softmax(xW + b) with W and b zero."""

from typing import Literal

from torch import nn

from mnist_lit.models.base import Optimizer, Tutorial


class SoftmaxRegressionNet(nn.Sequential):
    """Flatten, one 784 -> 10 linear layer: 7,850 parameters."""

    def __init__(self) -> None:
        super().__init__(nn.Flatten(), nn.Linear(784, 10))


class SoftmaxRegression(Tutorial):
    """Plain SGD at 0.001 on the cross-entropy *summed* over the batch of 64; 2000 steps."""

    name = "softmax_regression"

    def __init__(self, optimizer: Optimizer = "sgd", loss_reduction: Literal["mean", "sum"] = "sum", **kwargs) -> None:
        super().__init__(SoftmaxRegressionNet(), optimizer=optimizer, loss_reduction=loss_reduction, **kwargs)

    def init_weights(self) -> None:
        for p in self.net.parameters():  # the TF1 tutorial starts from zeros, not glorot
            nn.init.zeros_(p)
