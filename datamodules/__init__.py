"""LightningDataModules for lit-sr (paired SR, benchmark sets, embedded photos; poisoned data)."""

from datamodules.datasets import DataError, ImageRecord, SRPairDataset
from datamodules.poisoned import CacheMismatchError, PoisonCache, PoisonedSRDataModule
from datamodules.sr import (
    DIV2KDataModule,
    EmbeddedPhotosDataModule,
    HRFolderDataModule,
    SRDataModule,
    export_embedded_photos,
    load_embedded_photo,
)

__all__ = [
    "CacheMismatchError",
    "DataError",
    "DIV2KDataModule",
    "EmbeddedPhotosDataModule",
    "HRFolderDataModule",
    "ImageRecord",
    "PoisonCache",
    "PoisonedSRDataModule",
    "SRDataModule",
    "SRPairDataset",
    "export_embedded_photos",
    "load_embedded_photo",
]
