"""Independent oracles, written here and not imported from the library.

``TextbookBottleneck`` / ``TextbookBasic`` are the plain ``@nn.compact`` solutions of
the founding specification, run eagerly (no jit), which fix what the initial values are
for a seed. ``numpy_bottleneck`` / ``numpy_basic`` redo the arithmetic in float64 numpy
from a variable tree, sharing no code with flax.
"""

import flax.linen as nn
import jax
import numpy as np


class TextbookBottleneck(nn.Module):
    mid_features: int
    out_features: int

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.Conv(self.mid_features, kernel_size=(1, 1))(x)
        y = nn.BatchNorm(use_running_average=False)(y)
        y = nn.relu(y)
        y = nn.Conv(self.mid_features, kernel_size=(3, 3), padding="SAME")(y)
        y = nn.BatchNorm(use_running_average=False)(y)
        y = nn.relu(y)
        y = nn.Conv(self.out_features, kernel_size=(1, 1))(y)
        y = nn.BatchNorm(use_running_average=False)(y)
        y = y + residual
        return nn.relu(y)


class TextbookBasic(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.Conv(self.features, kernel_size=(3, 3), padding="SAME")(x)
        y = nn.BatchNorm(use_running_average=False)(y)
        y = nn.relu(y)
        y = nn.Conv(self.features, kernel_size=(3, 3), padding="SAME")(y)
        y = nn.BatchNorm(use_running_average=False)(y)
        return nn.relu(y + residual)


def textbook_forward(module, seed, x):
    x_b = x[None, ...]
    variables = module.init(jax.random.PRNGKey(seed), x_b)
    y, _ = module.apply(variables, x_b, mutable=["batch_stats"])
    return y.reshape(-1)


def textbook_bottleneck_forward(seed, x, mid_features, out_features):
    return textbook_forward(TextbookBottleneck(mid_features, out_features), seed, x)


def textbook_basic_forward(seed, x, features):
    return textbook_forward(TextbookBasic(features), seed, x)


# --- float64 numpy arithmetic -------------------------------------------------------


def np_conv(x, kernel, bias=None, stride=1, pad=((0, 0), (0, 0)), groups=1, dilation=1):
    """NHWC cross-correlation with an HWIO kernel, by explicit sums over the taps."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), pad[0], pad[1], (0, 0)))
    kernel = np.asarray(kernel, np.float64)
    kh, kw, cin_g, cout = kernel.shape
    n, h, w, cin = x.shape
    oh = (h - dilation * (kh - 1) - 1) // stride + 1
    ow = (w - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, oh, ow, cout))
    per_group = cout // groups
    for g in range(groups):
        xs = x[..., g * cin_g : (g + 1) * cin_g]
        ks = kernel[..., g * per_group : (g + 1) * per_group]
        for i in range(kh):
            for j in range(kw):
                patch = xs[
                    :,
                    i * dilation : i * dilation + stride * (oh - 1) + 1 : stride,
                    j * dilation : j * dilation + stride * (ow - 1) + 1 : stride,
                ]
                out[..., g * per_group : (g + 1) * per_group] += patch @ ks[i, j]
    if bias is not None:
        out += np.asarray(bias, np.float64)
    return out


def same_pad(size, kernel, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2)


def np_batchnorm_train(y, scale, bias, eps=1e-5):
    mean = y.mean(axis=(0, 1, 2))
    var = y.var(axis=(0, 1, 2))  # biased, as BatchNorm normalises with
    return (y - mean) / np.sqrt(var + eps) * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)


def relu(y):
    return np.maximum(y, 0.0)


def numpy_bottleneck(params, x_b):
    p = params
    h, w = x_b.shape[1:3]
    y = np_conv(x_b, p["Conv_0"]["kernel"], p["Conv_0"]["bias"])
    y = relu(np_batchnorm_train(y, **p["BatchNorm_0"]))
    y = np_conv(y, p["Conv_1"]["kernel"], p["Conv_1"]["bias"], pad=(same_pad(h, 3, 1), same_pad(w, 3, 1)))
    y = relu(np_batchnorm_train(y, **p["BatchNorm_1"]))
    y = np_conv(y, p["Conv_2"]["kernel"], p["Conv_2"]["bias"])
    y = np_batchnorm_train(y, **p["BatchNorm_2"])
    return relu(y + x_b)


def numpy_basic(params, x_b):
    p = params
    h, w = x_b.shape[1:3]
    pad = (same_pad(h, 3, 1), same_pad(w, 3, 1))
    y = relu(np_batchnorm_train(np_conv(x_b, p["Conv_0"]["kernel"], p["Conv_0"]["bias"], pad=pad), **p["BatchNorm_0"]))
    y = np_batchnorm_train(np_conv(y, p["Conv_1"]["kernel"], p["Conv_1"]["bias"], pad=pad), **p["BatchNorm_1"])
    return relu(y + x_b)
