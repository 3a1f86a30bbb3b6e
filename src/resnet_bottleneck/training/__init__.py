"""Training: settings, the train state and steps, checkpoints, and the loop that calls them."""

from .checkpoints import Checkpoints
from .config import Config, ConfigError, DivergedError, RunOptions, TrainingError
from .devices import data_mesh, maybe_initialize_distributed
from .loop import Result, load_datasets, train
from .state import TrainState, create_train_state, eval_step, make_optimizer, train_step

__all__ = [
    "Checkpoints",
    "Config",
    "ConfigError",
    "DivergedError",
    "Result",
    "RunOptions",
    "TrainState",
    "TrainingError",
    "create_train_state",
    "data_mesh",
    "eval_step",
    "load_datasets",
    "make_optimizer",
    "maybe_initialize_distributed",
    "train",
    "train_step",
]
