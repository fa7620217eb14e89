"""lit-sr: a PyTorch Lightning framework for the security of image super-resolution."""

__version__ = "0.1.0"
