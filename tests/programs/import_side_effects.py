"""Prints ``True`` when importing resnet_bottleneck leaves XLA_FLAGS and jax's config as they were."""

import os

import jax


def settings():
    return (
        os.environ.get("XLA_FLAGS"),
        jax.config.jax_enable_x64,
        jax.config.jax_numpy_rank_promotion,
        jax.config.jax_default_matmul_precision,
    )


if __name__ == "__main__":
    before = settings()
    import resnet_bottleneck  # noqa: F401

    print(before == settings())
