"""The train state and the two steps, as small pure functions (as in Flax's ImageNet example); the optimizer
is :mod:`.optim`'s.

The steps take batches of uint8 pixels and normalise them on the device (``data.normalize``),
so a quarter of the bytes travel from the loader; BatchNorm's statistics ride in the state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from .optim import learning_rate_schedule, make_optimizer  # noqa: F401 - importable from here as before


class TrainState(train_state.TrainState):
    """Flax's train state (step, params, optimizer state) plus BatchNorm's running statistics."""

    batch_stats: Any = None


def create_train_state(
    model, optimizer: optax.GradientTransformation, seed: int, image_size: int, start: dict | None = None
) -> TrainState:
    """Initial weights from ``seed`` alone (the same for any data, device or host count), or, where
    ``start`` (variables, e.g. pretrained) has a tensor of the same path and shape, that tensor.

    A classifier of another class count in ``start`` is passed over: the head is ``seed``'s.
    """
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, image_size, image_size, 3), jnp.float32))
    if start is not None:
        variables = {collection: _overlay(tree, start.get(collection, {})) for collection, tree in variables.items()}
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=optimizer, batch_stats=variables["batch_stats"]
    )


def _overlay(tree, given):
    """``tree`` with each leaf replaced by ``given``'s at the same path, where it has the same shape."""

    def pick(path, leaf):
        found = given
        for key in path:
            found = found.get(key.key) if isinstance(found, dict) else None
        return jnp.asarray(found, leaf.dtype) if found is not None and jnp.shape(found) == leaf.shape else leaf

    return jax.tree_util.tree_map_with_path(pick, tree)


def train_step(
    state: TrainState,
    batch: dict,
    num_classes: int,
    label_smoothing: float,
    freeze_bn: bool = False,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    seed: int | None = None,
):
    """One optimizer step on ``batch`` (``image`` uint8 NHWC, ``label``): the new state and the batch's
    mean loss and number of correct predictions. ``freeze_bn``: BatchNorm normalises with the running
    statistics, which stay as they are. ``mean``, ``std``: the normalisation (ImageNet's by default).
    ``seed``: for a model that drops (``drop_path_rate``, ``drop_rate``), the ``'dropout'`` RNG of this
    step is :func:`dropout_key` of it and the state's step, so a resumed run draws as an unbroken one."""
    images = normalize(batch["image"], mean, std)
    rngs = {} if seed is None else {"rngs": {"dropout": dropout_key(seed, state.step)}}

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        if freeze_bn:
            logits, batch_stats = state.apply_fn(variables, images, train=False), state.batch_stats
        else:
            logits, updates = state.apply_fn(variables, images, train=True, mutable=["batch_stats"], **rngs)
            batch_stats = updates["batch_stats"]
        targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets).mean(), (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, {"loss": loss, "correct": jnp.sum(jnp.argmax(logits, -1) == batch["label"])}


def dropout_key(seed: int, step) -> jax.Array:
    """The ``'dropout'`` RNG key of the step after ``step``: a function of the run's seed and the step alone
    (its own stream, apart from the initial weights' ``PRNGKey(seed)``)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _DROPOUT_STREAM), step)


#: Folded into the seed's key before the step, so that no step's key is the initialisation's.
_DROPOUT_STREAM = 0x64726F70  # "drop"


def eval_step(state: TrainState, batch: dict, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Sums over the batch's real (``mask``) examples, with the running averages: top-1 and top-5
    correct predictions, cross-entropy loss (no label smoothing), and the count. ``mean`` and
    ``std``: the normalisation the model was trained with."""
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, normalize(batch["image"], mean, std), train=False
    )
    mask, labels = batch["mask"], batch["label"]
    k = min(5, logits.shape[-1])
    top5 = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return {
        "correct": jnp.sum((jnp.argmax(logits, -1) == labels) & mask),
        "top5": jnp.sum(top5 & mask),
        "loss": jnp.sum(jnp.where(mask, loss, 0.0)),
        "count": jnp.sum(mask),
    }
