"""Trainboard: a training control room for PyTorch Connectomics segmentation runs."""

__version__ = "0.1.0"
