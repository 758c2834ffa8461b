"""Datasets, splits and both augmentation pipelines (docs/method.md sections 1, 7.3-7.5, 9).

Images are float32 in [0, 1] ([3, H, W] per sample, [B, 3, H, W] batched), labels int64
([H, W] / [B, H, W]) with 255 = ignore, confidence float32 in [0, 1].
"""

from prcl.data.build import DataBundle, build_datasets, build_val_dataset, open_layout, resolve
from prcl.data.io import IGNORE_INDEX, read_image, read_mask
from prcl.data.problems import DataProblems
from prcl.data.samples import ImageDataset, LabelledDataset, Sample, load_pair
from prcl.data.splits import Split, generate_split, read_split, write_split
from prcl.data.synthetic import ensure_synthetic
from prcl.data.transforms import LabelledTransform, RandomCrop, denormalize, normalize
from prcl.data.unlabelled import (
    classmix_mask,
    mix,
    photometric,
    random_scale_crop,
    strong_augment,
)
from prcl.data.voc import VOC_CLASSES, palette

__all__ = [
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "DataBundle",
    "DataProblems",
    "ImageDataset",
    "LabelledDataset",
    "LabelledTransform",
    "RandomCrop",
    "Sample",
    "Split",
    "build_datasets",
    "build_val_dataset",
    "classmix_mask",
    "denormalize",
    "ensure_synthetic",
    "generate_split",
    "load_pair",
    "mix",
    "normalize",
    "open_layout",
    "palette",
    "photometric",
    "random_scale_crop",
    "read_image",
    "read_mask",
    "read_split",
    "resolve",
    "strong_augment",
    "write_split",
]
