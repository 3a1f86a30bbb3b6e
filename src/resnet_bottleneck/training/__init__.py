"""Training: settings, the train state and steps, checkpoints, the loop that calls them, evaluation,
and a run's model file."""

from ..errors import ConfigError, DivergedError, TrainingError
from .checkpoints import Checkpoints
from .config import Config, RunOptions
from .devices import data_mesh, maybe_initialize_distributed
from .evaluation import Scores, evaluate, evaluate_onnx
from .loop import Result, load_datasets, train
from .optim import make_optimizer
from .state import TrainState, create_train_state, eval_step, train_step
from .stop import Stopped
from .weights import MODEL_FILE, load_run

__all__ = [
    "Checkpoints",
    "Config",
    "ConfigError",
    "DivergedError",
    "MODEL_FILE",
    "Result",
    "RunOptions",
    "Scores",
    "Stopped",
    "TrainState",
    "TrainingError",
    "create_train_state",
    "data_mesh",
    "eval_step",
    "evaluate",
    "evaluate_onnx",
    "load_datasets",
    "load_run",
    "make_optimizer",
    "maybe_initialize_distributed",
    "train",
    "train_step",
]
