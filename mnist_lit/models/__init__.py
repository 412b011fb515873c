"""The five tutorials; importing this package registers them with the Lightning CLI."""

from mnist_lit.models.base import Tutorial, count_params
from mnist_lit.models.cnn import CNN
from mnist_lit.models.dense512 import Dense512
from mnist_lit.models.fashion_mlp import FashionMLP
from mnist_lit.models.softmax_regression import SoftmaxRegression
from mnist_lit.models.tiny_mlp import TinyMLP

TUTORIALS: dict[str, type[Tutorial]] = {cls.name: cls for cls in (Dense512, CNN, TinyMLP, FashionMLP, SoftmaxRegression)}

__all__ = ["CNN", "Dense512", "FashionMLP", "SoftmaxRegression", "TinyMLP", "TUTORIALS", "Tutorial", "count_params"]
