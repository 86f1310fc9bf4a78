"""Data: robust image reading, datasets for the three folder layouts, preprocessing,
deterministic resumable sampling, and the built-in procedural street scenes.

- :mod:`spap.data.io`: :func:`list_images`, :func:`read_pixels` (any channel count, 8/16-bit
  and float kept), :func:`read_image` (any mode -> 8-bit RGB); truncated files raise,
  decompression-bomb guard.
- :mod:`spap.data.datasets`: :class:`ImageFolderDataset`, :class:`UnalignedDataset`,
  :class:`AlignedDataset`, :func:`build_dataset`.
- :mod:`spap.data.transforms`: reference CycleGAN preprocessing options, the value range,
  tensor <-> image (8/16-bit PNG, ``.npy``; atomic writes).
- :mod:`spap.data.sampler`: :class:`EpochSampler` yielding ``(epoch, index)``.
- :mod:`spap.data.scenes`: seeded label map / photo pairs (``spap data scenes``).
- :mod:`spap.data.labels`: label spaces (classes, palettes, ids): :class:`LabelSpace`,
  :func:`get_label_space`, :func:`nearest_palette`.
- :mod:`spap.data.pairs`: :class:`AlignedPairs` (label half, photo half, ground-truth ids of
  an aligned split) and its resizing helpers.
- :mod:`spap.data.download`: the paper's public datasets (``spap data get``): resumable
  downloads, archive verification, safe unpacking.
- :mod:`spap.data.cityscapes`: the official Cityscapes folders -> aligned / unaligned layouts
  and train-id maps (``spap data prepare cityscapes``).
"""

from __future__ import annotations

from spap.data.datasets import (
    DATASET_LAYOUTS,
    AlignedDataset,
    ImageFolderDataset,
    ImageList,
    UnalignedDataset,
    build_dataset,
    detect_layout,
)
from spap.data.io import (
    ARRAY_EXTENSIONS,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageTooLarge,
    UnreadableImage,
    list_images,
    read_image,
    read_pixels,
    scan_images,
    to_channels,
)
from spap.data.labels import (
    IGNORE_INDEX,
    LabelSpace,
    cityscapes_label_to_train_ids,
    get_label_space,
    nearest_palette,
)
from spap.data.pairs import AlignedPairs, read_ids
from spap.data.sampler import EpochSampler, item_generator
from spap.data.scenes import (
    SCENE_CLASSES,
    SCENE_PALETTE,
    ids_to_rgb,
    render_scene,
    rgb_to_ids,
    write_scenes,
)
from spap.data.transforms import (
    BIT_DEPTHS,
    PREPROCESS_OPTIONS,
    ImageTransform,
    TransformParams,
    check_transform_options,
    check_value_range,
    save_image,
    tensor_to_array,
    tensor_to_pil,
    to_tensor_image,
    value_bounds,
)

__all__ = [
    "ARRAY_EXTENSIONS",
    "BIT_DEPTHS",
    "DATASET_LAYOUTS",
    "DEFAULT_MAX_PIXELS",
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "PREPROCESS_OPTIONS",
    "SCENE_CLASSES",
    "SCENE_PALETTE",
    "AlignedDataset",
    "AlignedPairs",
    "EpochSampler",
    "ImageFolderDataset",
    "ImageList",
    "ImageTooLarge",
    "ImageTransform",
    "LabelSpace",
    "TransformParams",
    "UnalignedDataset",
    "UnreadableImage",
    "build_dataset",
    "check_transform_options",
    "check_value_range",
    "cityscapes_label_to_train_ids",
    "detect_layout",
    "get_label_space",
    "ids_to_rgb",
    "item_generator",
    "list_images",
    "nearest_palette",
    "read_ids",
    "read_image",
    "read_pixels",
    "render_scene",
    "rgb_to_ids",
    "save_image",
    "scan_images",
    "tensor_to_array",
    "tensor_to_pil",
    "to_channels",
    "to_tensor_image",
    "value_bounds",
    "write_scenes",
]
