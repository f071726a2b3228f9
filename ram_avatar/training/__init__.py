"""Training: configs and presets, checkpoints, the trainable model and the training loop."""

from ram_avatar.training.checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint,
                                            save_checkpoint)
from ram_avatar.training.config import (PRESETS, ConfigError, TrainConfig, get_preset,
                                        load_config, save_config)
from ram_avatar.training.model import AvatarTrainingModel
from ram_avatar.training.trainer import Trainer, split_train_val, train

__all__ = [
    "PRESETS", "AvatarTrainingModel", "ConfigError", "TrainConfig", "get_preset", "latest_checkpoint",
    "list_checkpoints", "load_checkpoint", "load_config", "save_checkpoint", "save_config",
    "split_train_val", "Trainer", "train",
]
