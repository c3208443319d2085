"""Datasets as class-indexed uint8 tensors, decoded once and cached (Omniglot, a user's image
folders)."""

from metalab.data.base import ClassIndexedDataset, Preprocess
from metalab.data.folder import load_image_folder
from metalab.data.imaging import load_images
from metalab.data.omniglot import SCHEMES, load_omniglot, omniglot_info

__all__ = [
    "SCHEMES",
    "ClassIndexedDataset",
    "Preprocess",
    "load_image_folder",
    "load_images",
    "load_omniglot",
    "omniglot_info",
]
