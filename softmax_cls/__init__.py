"""softmax-cls: a linear softmax classifier for CIFAR, trained with minibatch SGD."""

__version__ = "0.1.0"
