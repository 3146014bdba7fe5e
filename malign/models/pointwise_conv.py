"""1x1 ("pointwise") convolution computed as one matrix multiplication.

A 1x1 convolution with stride 1 over channels-last ``[batch, height, width, C_in]`` is
the matrix product of the ``[batch * height * width, C_in]`` rows with the
``[C_in, C_out]`` kernel (Lin et al. 2013, "Network in Network", arXiv:1312.4400; the
pointwise convolution of MobileNet, Howard et al. 2017, arXiv:1704.04861). XLA rewrites a
1x1 convolution into this dot itself (GPU/TPU), but TensorFlow's CPU kernels do not: on
the benchmark machine (2 AMD EPYC cores, fp32) the gradient pass of the EfficientNet-B0
tower at 128 px, batch 32 spent 566 ms per step in ``Conv2D`` and its two backprop
kernels (``Conv2DBackpropInput`` and ``Conv2DBackpropFilter`` ran at 3.5x and 2.5x the
forward's time), against 378 ms in ``MatMul`` for the same products written as here
(``benchmarks/RESULTS.md``, "1x1 convolutions as matmuls").

``PointwiseConv2D`` is a ``keras.layers.Conv2D`` (same weights: kernel
``[1, 1, C_in, C_out]``, optional bias ``[C_out]``; same config, activation, dtype policy
and checkpoints) whose convolution is that matmul, so the image tower, the converter and
saved models see an ordinary convolution layer.

Example:
    >>> layer = PointwiseConv2D(4, use_bias=False)
    >>> y = layer(np.ones((2, 3, 5, 6), "float32"))
    >>> y.shape, layer.kernel.shape
    (TensorShape([2, 3, 5, 4]), TensorShape([1, 1, 6, 4]))
"""

from __future__ import annotations

import keras
import numpy as np  # noqa: F401  (used in the docstring example)
from keras import ops


@keras.saving.register_keras_serializable(package="malign")
class PointwiseConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with a 1x1 kernel, computed as a matmul over channels.

    Input ``[batch, height, width, C_in]`` (any float dtype, spatial sizes may be unknown,
    batch may be 0) -> output ``[batch, height, width, filters]``, equal to
    ``keras.layers.Conv2D(filters, 1, ...)`` on the same weights up to float rounding.

    Args:
        filters: output channels ``C_out``.
        kernel_size, strides, dilation_rate: accepted so the layer reads any ``Conv2D``
            config, but must be 1 (or ``(1, 1)``).
        padding: ``"same"`` or ``"valid"`` (equal for a 1x1 kernel).
        **kwargs: every other ``Conv2D`` argument (``use_bias``, ``activation``,
            initializers, ``name``, ``dtype``, ...).

    Raises:
        ValueError: a kernel size, stride or dilation other than 1, ``groups`` other than
            1, or ``data_format="channels_first"``.
    """

    def __init__(self, filters, kernel_size=1, strides=1, padding="same", dilation_rate=1,
                 **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         dilation_rate=dilation_rate, **kwargs)
        for what, value in (("kernel_size", self.kernel_size), ("strides", self.strides),
                            ("dilation_rate", self.dilation_rate)):
            if tuple(value) != (1, 1):
                raise ValueError(f"PointwiseConv2D needs {what}=1, got {value}")
        if self.groups != 1:
            raise ValueError(f"PointwiseConv2D needs groups=1, got {self.groups}")
        if self.data_format != "channels_last":
            raise ValueError("PointwiseConv2D needs data_format='channels_last', got "
                             f"{self.data_format!r}")

    def convolution_op(self, inputs, kernel):
        channels_in, channels_out = kernel.shape[-2], kernel.shape[-1]
        shape = ops.shape(inputs)
        rows = ops.reshape(inputs, (-1, channels_in))
        outputs = ops.matmul(rows, ops.reshape(kernel, (channels_in, channels_out)))
        return ops.reshape(outputs, (*shape[:-1], channels_out))
