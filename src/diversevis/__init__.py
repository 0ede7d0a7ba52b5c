"""diversevis: diverse feature visualization and invariance analysis for PyTorch CNNs."""

__version__ = "0.1.0"
