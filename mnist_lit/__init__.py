"""mnist_lit: the classic Keras MNIST tutorials on PyTorch + Lightning."""

__version__ = "0.1.0"
