"""The train state, the optimizer and the two steps, as small pure functions (as in Flax's ImageNet example).

The steps take batches of uint8 pixels and normalise them on the device (``data.normalize``),
so a quarter of the bytes travel from the loader; BatchNorm's statistics ride in the state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from ..data.transforms import normalize
from .config import Config


class TrainState(train_state.TrainState):
    """Flax's train state (step, params, optimizer state) plus BatchNorm's running statistics."""

    batch_stats: Any = None


def _decay_mask(params):
    """Weight decay on conv and dense kernels only: not on BatchNorm scales or biases."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def learning_rate_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    """Linear warmup over ``warmup_epochs``, then cosine decay to zero at the last step of ``epochs``."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, max(warmup, 1), max(total, 2))


def make_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum and decoupled-from-BatchNorm weight decay on the schedule above."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=_decay_mask),
        optax.sgd(learning_rate_schedule(config, steps_per_epoch), momentum=config.momentum, nesterov=config.nesterov),
    )


def create_train_state(model, optimizer: optax.GradientTransformation, seed: int, image_size: int) -> TrainState:
    """Initial weights from ``seed`` alone (the same for any data, device or host count)."""
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, image_size, image_size, 3), jnp.float32))
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=optimizer,
                             batch_stats=variables["batch_stats"])


def train_step(state: TrainState, batch: dict, num_classes: int, label_smoothing: float):
    """One SGD step on ``batch`` (``image`` uint8 NHWC, ``label``): the new state and the batch's
    mean loss and number of correct predictions."""
    images = normalize(batch["image"])

    def loss_fn(params):
        logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images,
                                         train=True, mutable=["batch_stats"])
        targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets).mean(), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, {"loss": loss, "correct": jnp.sum(jnp.argmax(logits, -1) == batch["label"])}


def eval_step(state: TrainState, batch: dict):
    """Correct predictions and examples counted among the batch's real (``mask``) examples, running averages."""
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, normalize(batch["image"]),
                            train=False)
    mask = batch["mask"]
    return {"correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) & mask), "count": jnp.sum(mask)}
