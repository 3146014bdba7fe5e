"""Keras models: the image tower, the text tower and the ALIGN dual encoder."""

from malign.models.align_model import AlignModel, count_params
from malign.models.image_tower import ImageTower
from malign.models.text_tower import TextTower

__all__ = ["AlignModel", "ImageTower", "TextTower", "count_params"]
