"""What turns files into batches, shared by training, evaluation and prediction."""

from ..errors import DataError, ImageError
from .digits import ImageArrays, digits
from .folder import ImageFiles, image_folder_splits, is_train_val, list_images
from .pipeline import available_cores, default_workers, evaluation_batches, evaluation_steps, training_batches
from .transforms import eval_transform, normalize, random_resized_crop_box, train_transform

__all__ = [
    "DataError",
    "ImageArrays",
    "ImageError",
    "ImageFiles",
    "available_cores",
    "default_workers",
    "digits",
    "eval_transform",
    "evaluation_batches",
    "evaluation_steps",
    "image_folder_splits",
    "is_train_val",
    "list_images",
    "normalize",
    "random_resized_crop_box",
    "train_transform",
    "training_batches",
]
