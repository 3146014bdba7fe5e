"""1x1 ("pointwise") convolutions computed as one matrix multiplication.

A 1x1 convolution with stride 1 over channels-last ``[batch, height, width, C_in]`` is
the matrix product of the ``[batch * height * width, C_in]`` rows with the
``[C_in, C_out]`` kernel (Lin et al. 2013, "Network in Network", arXiv:1312.4400; the
pointwise convolution of MobileNet, Howard et al. 2017, arXiv:1704.04861). XLA rewrites a
1x1 convolution into this dot itself (GPU/TPU), but TensorFlow's CPU kernels do not: on
the benchmark machine (2 AMD EPYC cores, fp32) the gradient pass of the EfficientNet-B0
tower at 128 px, batch 32 spent 599 ms per step in ``Conv2D`` and its two backprop
kernels, against 411 ms with the 1x1 products written as here (``MatMul``; the stem's 3x3
convolution is in both figures; ``benchmarks/RESULTS.md``, "1x1 convolutions as
matmuls").

``pointwise_conv2d`` returns an ordinary ``keras.layers.Conv2D`` whose convolution is that
matmul. It stays of that class on purpose: Keras names a layer's weights in a ``.keras``
file after its class (``.../conv2d_3/vars``), so a subclass would make every model saved
before it unreadable (``tests/models/test_pointwise_conv.py`` loads one). Config, weights
(kernel ``[1, 1, C_in, C_out]``, optional bias), activation and dtype policy are those of
``Conv2D``; a model rebuilt from its config by other code gets the plain convolution,
which gives the same values.

Example:
    >>> layer = pointwise_conv2d(4, use_bias=False)
    >>> y = layer(np.ones((2, 3, 5, 6), "float32"))
    >>> y.shape, layer.kernel.shape, type(layer).__name__
    (TensorShape([2, 3, 5, 4]), TensorShape([1, 1, 6, 4]), 'Conv2D')
"""

from __future__ import annotations

import keras
import numpy as np  # noqa: F401  (used in the docstring example)
from keras import ops


def pointwise_matmul(inputs, kernel):
    """``conv2d(inputs, kernel, strides=1)`` for a 1x1 kernel, as one matmul.

    Args:
        inputs: ``[batch, height, width, C_in]`` (channels last; spatial sizes may be
            unknown, batch may be 0).
        kernel: ``[1, 1, C_in, C_out]``, same dtype as ``inputs``.

    Returns:
        ``[batch, height, width, C_out]``, equal to the convolution up to float rounding.
    """
    channels_in, channels_out = kernel.shape[-2], kernel.shape[-1]
    shape = ops.shape(inputs)
    rows = ops.reshape(inputs, (-1, channels_in))
    outputs = ops.matmul(rows, ops.reshape(kernel, (channels_in, channels_out)))
    return ops.reshape(outputs, (*shape[:-1], channels_out))


def pointwise_conv2d(filters: int, **kwargs) -> keras.layers.Conv2D:
    """``keras.layers.Conv2D(filters, 1, **kwargs)`` computed by ``pointwise_matmul``.

    Args:
        filters: output channels ``C_out``.
        **kwargs: any ``Conv2D`` argument but ``kernel_size`` (``use_bias``,
            ``activation``, ``padding``, initializers, ``name``, ``dtype``, ...).

    Returns:
        A ``keras.layers.Conv2D``: input ``[batch, height, width, C_in]`` -> output
        ``[batch, height, width, filters]``.

    Raises:
        ValueError: ``strides``, ``dilation_rate`` or ``groups`` other than 1, or
            ``data_format="channels_first"`` (a convolution the matmul does not equal).
    """
    layer = keras.layers.Conv2D(filters, 1, **kwargs)
    for what, value in (("strides", layer.strides), ("dilation_rate", layer.dilation_rate)):
        if tuple(value) != (1, 1):
            raise ValueError(f"pointwise_conv2d needs {what}=1, got {value}")
    if layer.groups != 1:
        raise ValueError(f"pointwise_conv2d needs groups=1, got {layer.groups}")
    if layer.data_format != "channels_last":
        raise ValueError("pointwise_conv2d needs data_format='channels_last', got "
                         f"{layer.data_format!r}")
    # An instance attribute (a plain function, not bound to the layer), looked up before
    # Conv2D.convolution_op when Conv2D.call runs self.convolution_op(inputs, kernel).
    layer.convolution_op = pointwise_matmul
    return layer
