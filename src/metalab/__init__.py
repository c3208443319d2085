"""metalab: meta-learning ("learning to learn") on PyTorch."""

__version__ = "0.1.0"
