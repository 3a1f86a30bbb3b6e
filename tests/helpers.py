"""Helpers shared by the tests: oracles' plumbing, tolerances, the one-line-error check.

The independent oracles themselves (textbook modules, float64 numpy arithmetic) are in
``textbook.py``; torchvision's own modules are the other oracle (:func:`random_torchvision`).
"""

from __future__ import annotations

import jax
import numpy as np


def assert_close_to_scale(ours, theirs, rel=1e-4, what=""):
    """``max|ours - theirs| <= rel * max|theirs|``: a relative tolerance on the tensor's scale."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    scale = max(np.abs(theirs).max(), 1e-12)
    assert np.abs(ours - theirs).max() <= rel * scale, (what, np.abs(ours - theirs).max() / scale)


def assert_trees_close(ours, theirs, rel=1e-4):
    """:func:`assert_close_to_scale` leaf by leaf over two pytrees of the same structure."""
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree_util.tree_leaves(theirs)):
        assert_close_to_scale(a, b, rel=rel, what=jax.tree_util.keystr(path))


def assert_trees_equal(ours, theirs):
    """Bit for bit, leaf by leaf, with the same structure."""
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        np.testing.assert_array_equal(a, b)


def one_line_error(stderr: str, *fragments: str, prog: str | None = None) -> str:
    """The CLI's error contract: one line, no traceback, ``prog: error: ...`` with every fragment."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    if prog is not None:
        assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --- torchvision as the oracle ---------------------------------------------------------


def randomize_norms(model, seed=1):
    """Random affine and running statistics for every ``BatchNorm2d`` and ``FrozenBatchNorm2d``; ``model`` in eval mode."""
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)):
                c = m.weight.shape[0]
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model.eval()


def random_torchvision(name, seed=0, num_classes=1000):
    """A torchvision model with random weights and randomised BatchNorm affine and running statistics."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    return randomize_norms(getattr(torchvision.models, name)(weights=None, num_classes=num_classes), seed + 1)


def torch_stages(model, x):
    """torchvision's stage outputs (stem after ReLU, layer1..4) and logits, NHWC numpy."""
    import torch

    seen = {}
    hooks = [model.relu.register_forward_hook(lambda m, i, o: seen.setdefault("stem", o))]
    for i, stage in enumerate(["C2", "C3", "C4", "C5"]):
        hooks.append(getattr(model, f"layer{i + 1}").register_forward_hook(lambda m, i, o, s=stage: seen.__setitem__(s, o)))
    logits = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    for h in hooks:
        h.remove()
    return {k: v.detach().numpy().transpose(0, 2, 3, 1) for k, v in seen.items()}, logits.detach().numpy()
