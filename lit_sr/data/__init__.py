"""The SR data pipeline's library side: prepared sub-images, a shared uint8 image store, uint8 pixels,
device-side augmentation. No Lightning here; the data modules in ``datamodules/`` use it.

Command line: ``lit-sr data prepare --hr_dir ... --out_dir ...`` (see :mod:`lit_sr.jobs.data.cli`).
"""

from lit_sr.data.augment import augment_batch
from lit_sr.data.images import bicubic_lr, lr_partner, read_pixels, to_float, to_uint8
from lit_sr.data.prepare import (
    PreparedDataError,
    PreparedDataMismatchError,
    PreparedPair,
    PrepareReport,
    place_back,
    prepare_subimages,
    prepared_config,
    read_prepared,
    subimage_boxes,
    subimage_starts,
)
from lit_sr.data.shared import SharedImageStore, StoreEntryError, default_cache_dir

__all__ = [
    "PrepareReport",
    "PreparedDataError",
    "PreparedDataMismatchError",
    "PreparedPair",
    "SharedImageStore",
    "StoreEntryError",
    "augment_batch",
    "bicubic_lr",
    "default_cache_dir",
    "lr_partner",
    "place_back",
    "prepare_subimages",
    "prepared_config",
    "read_pixels",
    "read_prepared",
    "subimage_boxes",
    "subimage_starts",
    "to_float",
    "to_uint8",
]
