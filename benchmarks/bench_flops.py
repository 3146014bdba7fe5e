"""Distance to the limit: model FLOPs of each tower, this machine's matmul peak, and MFU.

For the three ``bench_vs_transformers.py`` configurations (``a``, ``b``, ``base``: the
malign model of the same architecture, built with the same ``AlignConfig`` ->
``malign.convert.config_from_transformers_align`` mapping that ``malign convert`` uses,
random weights), this script

1. counts model FLOPs per sample of the image tower forward, the text tower forward (both
   in inference mode, as the embedding benchmarks run them, and in training mode) and the
   contrastive loss, with TensorFlow's own profiler:
   ``tf.compat.v1.profiler.profile(graph, cmd="op",
   options=ProfileOptionBuilder.float_operation())`` on the graph of a ``tf.function``'s
   concrete function at batch 1 (the loss at the configuration's batch ``B``, divided by
   ``B``: its similarity matmul grows with ``B``). Conventions (the profiler's): a
   multiply-add is 2 FLOPs (MatMul ``2 m k n``, Conv2D ``2 * output elements * kh * kw *
   in_channels``, DepthwiseConv2dNative ``2 * output elements * kh * kw``), an elementwise
   op 1 FLOP per output element (Softmax 5). The profiler has no FLOP statistic for some
   ops that these graphs hold; this script registers one (``register_flop_statistics``):
   ``Einsum`` (keras-hub's attention projections are ``EinsumDense``) ``2 *`` the product
   of the sizes of all its indices, and 1 FLOP per output element for the elementwise
   ``Sigmoid`` (swish), ``Erf`` and ``Erfc`` (GELU), ``Tanh``, ``Exp``, ``Sqrt``, ``Relu``;
   ``SoftmaxCrossEntropyWithLogits`` 5 per logit. Ops without any statistic
   (gathers, reshapes, batch-norm's ``FusedBatchNormV3`` if present, ...) are listed with
   their output elements.
   The text tower's model FLOPs are those of its real tokens: the benchmark batch's captions
   have 3 to ``sequence_length`` tokens and malign runs BERT on those only
   (``malign.models.unpadded_bert``; transformers computes the padding too, which is not
   counted as model FLOPs for either side). The padded graph is counted at three lengths
   without padding and the exact quadratic in the length is averaged over the batch's
   captions (``mean_over_lengths``). Every layer counts every real token, although malign's
   last layer runs its queries and feed-forward on the ``[CLS]`` rows only.
   A training step is counted as ``3 x forward`` (backward = 2 x forward: the gradients with
   respect to the activations and to the weights each cost one forward) of both towers in
   training mode and of the loss, plus the AdamW update at ``ADAMW_FLOPS_PER_WEIGHT`` = 15
   FLOPs per trainable weight per step (Keras' AdamW: two moment updates 3 + 4, the
   bias-corrected step 5, the decoupled weight decay 2, the subtraction 1), divided by the
   batch. The ``*-grad`` modes are ``3 x`` one tower's training-mode forward.
2. measures this machine's float32 rates in a ``tf.function`` (median of ``--repeats``
   calls after a warm-up): a square ``tf.matmul`` (``--matmul-size``, 2048: the matmul
   peak), and for contrast a 1x1 Conv2D, 3x3 and 5x5 depthwise convolutions and an
   elementwise swish at EfficientNet-B0 shapes, in GFLOP/s by the same conventions.
3. takes the step times / throughputs measured by ``bench_vs_transformers.py`` (samples/s,
   ``--measured``; the default is the latest quiet-machine figures in benchmarks/RESULTS.md,
   see ``MEASURED``) and prints the achieved model FLOP/s of malign and transformers per
   configuration and mode, and as a fraction of the measured matmul peak (MFU). It also
   prints each op-type group's share of the FLOPs and the time it would take at the rate
   measured for it here, which shows what holds the MFU back.
4. reports the memory of align-base per example: the bytes of the outputs of all ops of a
   training-mode forward at batch 1 (an upper bound of the activations kept for the
   backward pass: every intermediate counted once, none freed or fused), and of the weights
   with AdamW's two slots (``3 x 4`` bytes a weight in float32) and the gradients.

``--write`` appends a section to benchmarks/RESULTS.md (command, machine, tables).

The rates need a quiet machine (``--quiet-wait``); a table whose rates ran while other
processes used more than ``CONTENDED_CORES`` says that it is not valid. Counting takes
about 90 s of one core (align-base's graphs); ``--json`` keeps the counts and
``--counts-from`` reuses them to measure only the rates (about 10 s).

Usage:
    python benchmarks/bench_flops.py --quiet-wait 600 --json /tmp/flops.json --write
    python benchmarks/bench_flops.py --counts-from /tmp/flops.json --quiet-wait 600 --write
    python benchmarks/bench_flops.py --configs a --measured "a:train=22.91/20.80"
    # throughputs of another machine: MFU against that machine's matmul rate (GFLOP/s)
    python benchmarks/bench_flops.py --counts-from /tmp/flops.json \
        --rates-from /tmp/flops.json --peak-gflops 224
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # measure the malign of this checkout
sys.path.insert(0, str(HERE))

from bench_vs_transformers import CONFIGS, ContentionMeter, wait_for_quiet  # noqa: E402

#: other processes' CPU (cores) above which the measured rates are flagged as not valid.
CONTENDED_CORES = 0.3
#: FLOPs per trainable weight of one Keras AdamW update (see the module docstring).
ADAMW_FLOPS_PER_WEIGHT = 15
MODES = ("train", "image", "text", "image-grad", "text-grad")
GROUPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul/BatchMatMul/Einsum", "elementwise")
_MATMUL_OPS = {"MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum"}
_UNARY_EXTRA = ("Sigmoid", "Erf", "Erfc", "Tanh", "Exp", "Sqrt", "Relu")
# Ops whose outputs are not new data (inputs, weights, aliases, shape arithmetic): left out
# of the output bytes. IdentityN is tf.custom_gradient's pass-through (Keras' swish).
_NO_DATA_OPS = {"Placeholder", "Const", "ReadVariableOp", "VarHandleOp", "Identity", "IdentityN",
                "NoOp", "Shape", "Reshape", "StridedSlice", "Pack", "ConcatV2", "Cast",
                "Transpose", "ExpandDims", "Squeeze", "GatherV2", "ResourceGather",
                "OnesLike", "ZerosLike", "Fill", "Range", "StopGradient", "Tile"}

#: samples/s medians (malign / transformers) from benchmarks/RESULTS.md, the latest
#: quiet-machine figure of each configuration and mode, "config:mode=malign/transformers":
#: a train: "malign vs transformers AlignModel (PyTorch): a", 2nd section, `--configs a
#:   --modes train --repeats 5 --warmup 3 --steps 5 --quiet-wait 60`, batch 32;
#: a image, text: the 1st "... : a" section (`--modes train,image,text --repeats 5`; its
#:   train row ran under contention and is not used), batch 32;
#: a image-grad, text-grad: the 3rd "... : a" section (`--modes image-grad,text-grad
#:   --repeats 3 --warmup 2 --steps 4`), batch 32;
#: b: "... : b" (`--configs b --modes train,image,text --repeats 3 --warmup 2 --steps 3`),
#:   batch 16;
#: base: "... : base" (`--configs base --modes image,text --repeats 3 --warmup 1
#:   --steps 3`), batch 8.
#: The CPU of the machine those figures were measured on (their sections' machine line).
MEASURED_MACHINE = "Intel(R) Xeon(R) Processor, 2 cores"
MEASURED = ("a:train=22.91/20.80,a:image=161.74/82.70,a:text=244.24/282.04,"
            "a:image-grad=35.95/28.96,a:text-grad=88.93/93.25,"
            "b:train=2.69/2.57,b:image=32.12/17.39,b:text=15.73/19.33,"
            "base:image=4.47/2.12,base:text=15.18/18.87")


# -- FLOP counting ----------------------------------------------------------------------------
def _einsum_flops(graph, node):
    """2 x the product of the sizes of all indices of a two-operand ``Einsum``."""
    import numpy as np
    from tensorflow.python.framework import graph_util, ops

    equation = node.attr["equation"].s.decode()
    inputs, _ = equation.replace(" ", "").split("->")
    sizes = {}
    for operand, name in zip(inputs.split(","), node.input):
        shape = graph_util.tensor_shape_from_node_def_name(graph, name)
        shape.assert_is_fully_defined()
        if "..." in operand:
            raise ValueError(f"Einsum {equation!r}: ellipsis not supported")
        for letter, size in zip(operand, shape.as_list()):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
    return ops.OpStats("flops", 2 * int(np.prod(list(sizes.values()), dtype=np.int64)))


def _per_element(count: int):
    def flops(graph, node):
        import numpy as np
        from tensorflow.python.framework import graph_util, ops

        shape = graph_util.tensor_shape_from_node_def_name(graph, node.name)
        shape.assert_is_fully_defined()
        return ops.OpStats("flops", count * int(np.prod(shape.as_list(), dtype=np.int64)))
    return flops


def _logits_flops(graph, node):
    import numpy as np
    from tensorflow.python.framework import graph_util, ops

    shape = graph_util.tensor_shape_from_node_def_name(graph, node.input[0])
    shape.assert_is_fully_defined()
    return ops.OpStats("flops", 5 * int(np.prod(shape.as_list(), dtype=np.int64)))


def register_flop_statistics() -> list[str]:
    """Registers FLOP statistics for ops the TensorFlow profiler does not count (once).

    ``Einsum``: 2 x the product of all index sizes; ``Sigmoid``, ``Erf``, ``Erfc``, ``Tanh``,
    ``Exp``, ``Sqrt``, ``Relu``: 1 per output element; ``SoftmaxCrossEntropyWithLogits``:
    5 per logit (as the profiler's ``Softmax``). An op that already has one keeps it.

    Returns:
        The op types registered by this call.

    Example:
        >>> "Einsum" in register_flop_statistics() or True
        True
    """
    from tensorflow.python.framework import ops

    wanted = {"Einsum": _einsum_flops, "SoftmaxCrossEntropyWithLogits": _logits_flops}
    wanted.update({op: _per_element(1) for op in _UNARY_EXTRA})
    registered = []
    for op_type, function in wanted.items():
        try:
            ops.RegisterStatistics(op_type, "flops")(function)
            registered.append(op_type)
        except KeyError:  # already registered (by TensorFlow or an earlier call)
            pass
    return registered


def op_group(op_type: str) -> str:
    """The group of ``GROUPS`` an op type's FLOPs count in.

    Example:
        >>> op_group("Einsum"), op_group("Conv2D"), op_group("AddV2")
        ('MatMul/BatchMatMul/Einsum', 'Conv2D', 'elementwise')
    """
    if op_type in _MATMUL_OPS:
        return "MatMul/BatchMatMul/Einsum"
    if op_type in ("Conv2D", "DepthwiseConv2dNative"):
        return op_type
    return "elementwise"


def count_graph_flops(graph) -> dict:
    """FLOPs of a graph by op type, from ``tf.compat.v1.profiler.profile``.

    Args:
        graph: a ``tf.Graph`` with fully defined shapes (e.g. a concrete function's graph).

    Returns:
        ``{"total": FLOPs, "by_type": {op type: FLOPs}, "by_group": {group: FLOPs},
        "output_bytes": bytes of all op outputs except constants, variables, inputs,
        aliases and reshapes (``_NO_DATA_OPS``), "uncounted": {op type: output elements} of ops with no FLOP statistic
        that compute something}``.

    Example:
        >>> import tensorflow as tf
        >>> f = tf.function(lambda x: tf.matmul(x, tf.ones([3, 4])))
        >>> count_graph_flops(f.get_concrete_function(tf.TensorSpec([2, 3])).graph)["total"]
        48
    """
    import numpy as np
    import tensorflow as tf

    register_flop_statistics()
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    profile = tf.compat.v1.profiler.profile(graph, cmd="op", options=options)
    # The "op" view is a chain (each node's total includes the nodes below it): take each
    # op type's own float_ops.
    by_type, nodes = {}, list(profile.children)
    while nodes:
        node = nodes.pop()
        if node.float_ops:
            by_type[node.name] = by_type.get(node.name, 0) + int(node.float_ops)
        nodes.extend(node.children)
    by_group = dict.fromkeys(GROUPS, 0)
    for op_type, flops in by_type.items():
        by_group[op_group(op_type)] += flops
    output_bytes, uncounted = 0, {}
    for op in graph.get_operations():
        if op.type in _NO_DATA_OPS or op.type.startswith(("Var", "Assign", "Save", "Restore")):
            continue
        for out in op.outputs:
            if out.dtype == tf.resource or not out.shape.is_fully_defined():
                continue
            elements = int(np.prod(out.shape.as_list(), dtype=np.int64))
            output_bytes += elements * out.dtype.size
            if op.type not in by_type:
                uncounted[op.type] = uncounted.get(op.type, 0) + elements
    return {"total": int(profile.total_float_ops), "by_type": by_type, "by_group": by_group,
            "output_bytes": int(output_bytes), "uncounted": uncounted}


def _scaled(counted: dict, divisor: int) -> dict:
    return {"total": counted["total"] / divisor,
            "by_type": {k: v / divisor for k, v in counted["by_type"].items()},
            "by_group": {k: v / divisor for k, v in counted["by_group"].items()},
            "output_bytes": counted["output_bytes"] / divisor,
            "uncounted": {k: v / divisor for k, v in counted["uncounted"].items()}}


def model_config(name: str):
    """The malign ``ModelConfig`` of a ``bench_vs_transformers`` configuration.

    The transformers ``AlignConfig`` of ``CONFIGS[name]`` is written as a ``config.json``
    (transformers' defaults for what it leaves out; the projection width is the last
    block's rounded width, as ``bench_vs_transformers`` sets it) and mapped by
    ``malign.convert.config_from_transformers_align``, as ``malign convert`` maps it.

    Example:
        >>> model_config("a").image.image_size  # doctest: +SKIP
        128
    """
    from malign.convert.transformers_align import config_from_transformers_align
    from malign.models.sizes import round_filters

    spec = CONFIGS[name]
    if "config_file" in spec:
        return config_from_transformers_align(Path(spec["config_file"]).parent,
                                              sequence_length=spec["sequence_length"])
    vision = spec["vision"]
    projection = round_filters(vision["out_channels"][-1], vision["width_coefficient"],
                               vision.get("depth_divisor", 8))
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "config.json").write_text(json.dumps({
            "model_type": "align", "projection_dim": projection, "temperature_init_value": 1.0,
            "vision_config": vision, "text_config": spec["text"]}))
        return config_from_transformers_align(directory, sequence_length=spec["sequence_length"])


def count_model_flops(name: str) -> dict:
    """FLOPs per sample of a configuration's towers and loss, and its weights.

    Returns:
        ``{"image": ..., "text": ..., "image_train": ..., "text_train": ..., "loss": ...}``
        (each a ``count_graph_flops`` result per sample) plus ``"trainable"`` and
        ``"weights"`` (counts), ``"batch"`` (the batch of the loss count) and
        ``"embedding_dim"``.
    """
    import keras
    import tensorflow as tf

    import malign

    config = model_config(name)
    keras.utils.set_random_seed(0)
    model = malign.AlignModel(config)
    # The padded graph has static shapes for the profiler; it is counted at lengths with
    # no padding and evaluated at the benchmark batch's real tokens (text_token_lengths).
    model.text_tower.unpadded = False
    size, length = model.image_size, model.sequence_length
    batch = CONFIGS[name]["batch"]
    image_spec = tf.TensorSpec([1, size, size, 3], tf.float32)
    lengths = text_token_lengths(name, model)
    result = {}
    for training in (False, True):
        suffix = "_train" if training else ""
        image = tf.function(lambda x, t=training: model.embed_image(x, training=t))
        text = tf.function(lambda ids, mask, t=training: model.embed_text(
            {"token_ids": ids, "padding_mask": mask}, training=t))
        result["image" + suffix] = count_graph_flops(
            image.get_concrete_function(image_spec).graph)
        at_length = {n: count_graph_flops(text.get_concrete_function(
            *[tf.TensorSpec([1, n], tf.int32)] * 2).graph)
            for n in sorted({max(1, length // 4), max(2, length // 2), length})}
        result["text" + suffix] = mean_over_lengths(at_length, lengths)
    result["loss"] = _scaled(loss_flops(batch, model.embedding_dim, model), batch)
    result.update(trainable=int(sum(w.numpy().size for w in model.trainable_weights)),
                  weights=malign.models.count_params(model), batch=batch,
                  embedding_dim=model.embedding_dim, image_size=size, sequence_length=length)
    return result


def text_token_lengths(name: str, model) -> list[int]:
    """Real tokens of each caption of the batch ``bench_vs_transformers`` embeds."""
    from bench_vs_transformers import _inputs

    batch = CONFIGS[name]["batch"]
    arrays = _inputs(batch, model.image_size, model.sequence_length, model.vocabulary_size)
    return [int(n) for n in arrays["padding_mask"].sum(axis=1)]


def mean_over_lengths(at_length: dict[int, dict], lengths: list[int]) -> dict:
    """A text count per caption, averaged over captions of ``lengths`` real tokens.

    A BERT forward's FLOPs (and output bytes) on ``n`` tokens are ``c + a n + b n^2``
    exactly (token-wise ops, attention scores and sums, the [CLS] projection), so three
    counts of ``at_length`` fix every entry's quadratic, evaluated here at each length.

    Example:
        >>> counts = {n: {"total": 1 + 2 * n + n * n} for n in (1, 2, 4)}
        >>> mean_over_lengths(counts, [3, 3, 0])["total"]
        11.0
    """
    import numpy as np

    ns = sorted(at_length)
    degree = min(2, len(ns) - 1)  # a sequence too short for three lengths: linear or constant
    x = np.asarray(ns, float)

    def fit(values: list[float]) -> float:
        coefficients = np.polyfit(x, np.asarray(values, float), degree)
        return float(np.mean(np.polyval(coefficients, np.asarray(lengths, float))))

    def merge(parts: list):
        if isinstance(parts[0], dict):
            keys = set().union(*parts)
            return {k: merge([p.get(k, 0) for p in parts]) for k in keys}
        return fit(parts)

    return merge([at_length[n] for n in ns])


def loss_flops(batch: int, dim: int, model=None) -> dict:
    """FLOPs of one contrastive loss (both directions, label smoothing 0.1) on [batch, dim].

    As ``AlignModel.compute_loss`` computes it (the model's, when given; else
    ``malign.losses.contrastive_loss``), outside a replica context: the whole batch.
    """
    import tensorflow as tf

    import malign

    spec = tf.TensorSpec([batch, dim], tf.float32)
    if model is not None:
        fn = tf.function(model.contrastive_loss)
    else:
        fn = tf.function(lambda a, b: malign.losses.contrastive_loss(a, b, 1.0,
                                                                     label_smoothing=0.1))
    return count_graph_flops(fn.get_concrete_function(spec, spec).graph)


def mode_flops(counts: dict, mode: str, batch: int) -> float:
    """Model FLOPs per sample of a benchmark mode.

    ``image`` / ``text``: one inference-mode forward of the tower. ``image-grad`` /
    ``text-grad``: 3 x the tower's training-mode forward. ``train``: 3 x (both towers'
    training-mode forward + the loss per sample) + ``ADAMW_FLOPS_PER_WEIGHT`` x trainable
    weights / batch.

    Example:
        >>> c = {"image": {"total": 10}, "text": {"total": 5}, "image_train": {"total": 11},
        ...      "text_train": {"total": 6}, "loss": {"total": 1}, "trainable": 100}
        >>> mode_flops(c, "train", 10), mode_flops(c, "image-grad", 10)
        (204.0, 33)
    """
    if mode in ("image", "text"):
        return counts[mode]["total"]
    if mode in ("image-grad", "text-grad"):
        return 3 * counts[mode.split("-")[0] + "_train"]["total"]
    if mode == "train":
        forward = (counts["image_train"]["total"] + counts["text_train"]["total"]
                   + counts["loss"]["total"])
        return 3 * forward + ADAMW_FLOPS_PER_WEIGHT * counts["trainable"] / batch
    raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")


def mode_groups(counts: dict, mode: str) -> dict:
    """FLOPs per sample by op group of a mode (the optimizer and loss left out)."""
    pieces = {"image": ["image"], "text": ["text"], "image-grad": ["image_train"],
              "text-grad": ["text_train"], "train": ["image_train", "text_train"]}[mode]
    factor = 1 if mode in ("image", "text") else 3
    return {g: factor * sum(counts[p]["by_group"][g] for p in pieces) for g in GROUPS}


def achieved(flops_per_sample: float, samples_per_s: float, peak_flops: float) -> dict:
    """Achieved model FLOP/s and MFU (their fraction of ``peak_flops``, FLOP/s).

    Example:
        >>> achieved(2e9, 10.0, 1e11)
        {'flops_per_s': 20000000000.0, 'mfu': 0.2}
    """
    rate = flops_per_sample * samples_per_s
    return {"flops_per_s": rate, "mfu": rate / peak_flops}


def parse_measured(text: str) -> dict:
    """``"a:train=22.91/20.80,..."`` -> ``{("a", "train"): (22.91, 20.80)}`` (samples/s).

    Example:
        >>> parse_measured("a:train=2/1.5,b:image=3/")
        {('a', 'train'): (2.0, 1.5), ('b', 'image'): (3.0, None)}
    """
    out = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        key, _, values = item.partition("=")
        config, _, mode = key.partition(":")
        if mode not in MODES or not values:
            raise ValueError(f"--measured {item!r}: want config:mode=malign/transformers, "
                             f"mode one of {', '.join(MODES)}")
        sides = (values.split("/") + [""])[:2]
        out[(config, mode)] = tuple(float(v) if v else None for v in sides)
    return out


def measured_from_results(text: str, cpu: str, max_other_cores: float = CONTENDED_CORES) -> dict:
    """The latest samples/s medians of each configuration and mode measured on ``cpu``, read
    from the ``bench_vs_transformers.py --write`` sections of a RESULTS.md text.

    A later section replaces an earlier one's figure; rows measured while other processes
    used more than ``max_other_cores`` (either side) are left out; so are sections of
    other machines (their ``Machine:`` line does not start with ``cpu``).

    Returns:
        ``{(config, mode): (malign, transformers)}``, as ``parse_measured``.

    Example:
        >>> section = ("## malign vs transformers AlignModel (PyTorch): a\n\n"
        ...            "Machine: CPU X, 2 cores\n\n"
        ...            "| a | train | 32 | 1 / **16.00** / 2 | 1 / **13.00** / 2 | **1.23x** "
        ...            "| 0.00 / 0.01 |\n")
        >>> measured_from_results(section, "CPU X")
        {('a', 'train'): (16.0, 13.0)}
        >>> measured_from_results(section, "CPU Y")
        {}
    """
    import re

    out, machine, in_section = {}, "", False
    row = re.compile(r"^\| (\w+) \| ([\w-]+) \| \d+ \| [^|]*\*\*([\d.]+)\*\*[^|]*\| "
                     r"[^|]*\*\*([\d.]+)\*\*[^|]*\| [^|]*\| ([\d.]+) / ([\d.]+) \|")
    for line in text.splitlines():
        if line.startswith("## "):
            in_section = line.startswith("## malign vs transformers AlignModel")
            machine = ""
        elif in_section and line.startswith("Machine: "):
            machine = line[len("Machine: "):]
        elif in_section and machine.startswith(cpu):
            match = row.match(line)
            if match and max(float(match[5]), float(match[6])) <= max_other_cores \
                    and match[2] in MODES:
                out[(match[1], match[2])] = (float(match[3]), float(match[4]))
    return out


# -- rates --------------------------------------------------------------------------------------
def _median_seconds(fn, args, repeats: int) -> float:
    fn(*args).numpy()  # trace + warm up
    fn(*args).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args).numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_rates(matmul_size: int = 2048, repeats: int = 7, wait=None) -> dict:
    """This machine's float32 rates in GFLOP/s (median of ``repeats`` calls, tf.function).

    ``matmul``: [n, n] x [n, n] (``2 n^3`` FLOPs). ``conv1x1``: EfficientNet-B0's expansion
    conv at 224 px stage 3 ([8, 28, 28, 40] -> 240 channels). ``depthwise3x3`` ([8, 56, 56,
    144]) and ``depthwise5x5`` ([8, 28, 28, 240]), stride 1, same padding. ``swish``: ``x *
    sigmoid(x)`` on [8, 56, 56, 144] (2 FLOPs an element). Each is timed with a cheap
    reduction of its output so the op is not pruned; ``other_cores``: CPU other processes
    used meanwhile. ``wait``, if given, is called before each op (e.g. to wait for quiet).
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def t(*shape):
        return tf.constant(rng.standard_normal(shape).astype(np.float32))

    cases = {
        "matmul": (lambda a, b: tf.reduce_sum(tf.matmul(a, b)[:1]),
                   (t(matmul_size, matmul_size), t(matmul_size, matmul_size)),
                   2 * matmul_size ** 3),
        "conv1x1": (lambda x, w: tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME")[:1, :1]),
                    (t(8, 28, 28, 40), t(1, 1, 40, 240)), 2 * 8 * 28 * 28 * 240 * 40),
        "depthwise3x3": (lambda x, w: tf.reduce_sum(
            tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME")[:1, :1]),
            (t(8, 56, 56, 144), t(3, 3, 144, 1)), 2 * 8 * 56 * 56 * 144 * 9),
        "depthwise5x5": (lambda x, w: tf.reduce_sum(
            tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME")[:1, :1]),
            (t(8, 28, 28, 240), t(5, 5, 240, 1)), 2 * 8 * 28 * 28 * 240 * 25),
        "swish": (lambda x: tf.reduce_sum((x * tf.sigmoid(x))[:1, :1]),
                  (t(8, 56, 56, 144),), 2 * 8 * 56 * 56 * 144),
    }
    rates = {}
    for name, (fn, args, flops) in cases.items():
        if wait is not None:
            wait()
        meter = ContentionMeter()
        meter.start()
        seconds = _median_seconds(tf.function(fn), args, repeats)
        rates[name] = {"gflops": flops / seconds / 1e9, "seconds": seconds, "flops": flops,
                       "other_cores": meter.other_cores()}
    return rates


#: op group -> the measured rate that stands for it (what a group's FLOPs run at, roughly).
GROUP_RATE = {"Conv2D": "conv1x1", "DepthwiseConv2dNative": "depthwise3x3",
              "MatMul/BatchMatMul/Einsum": "matmul", "elementwise": "swish"}


def estimated_seconds(groups: dict, rates: dict) -> dict:
    """Seconds per sample of each op group at its measured rate (``GROUP_RATE``).

    Example:
        >>> estimated_seconds({"Conv2D": 2e9}, {"conv1x1": {"gflops": 100.0}})
        {'Conv2D': 0.02}
    """
    return {g: flops / (rates[GROUP_RATE[g]]["gflops"] * 1e9) for g, flops in groups.items()}


# -- report -------------------------------------------------------------------------------------
def _g(flops: float) -> str:
    return f"{flops / 1e9:.3f}"


def format_report(counts: dict, rates: dict, measured: dict,
                  peak_gflops: float | None = None, peak_source: str = "") -> str:
    """The Markdown tables of a run (MFU against ``peak_gflops`` if given, else the
    measured matmul rate)."""
    peak = (peak_gflops or rates["matmul"]["gflops"]) * 1e9
    peak_source = peak_source or ("given (--peak-gflops)" if peak_gflops else
                                  "the matmul rate measured here")
    lines = ["FLOPs per sample (GFLOP, multiply-add = 2; forward passes at batch 1, the loss "
             "at the configuration's batch B divided by B):", "",
             "| config | image size / tokens | weights (trainable) | image fwd (inference) | "
             "image fwd (training) | text fwd on real tokens (inference) | text fwd on real tokens (training) | "
             "loss fwd at B | train step (3 x fwd + AdamW 15/weight / B) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, c in counts.items():
        lines.append(
            f"| {name} | {c['image_size']} px / {c['sequence_length']} | {c['weights']:,} "
            f"({c['trainable']:,}) | {_g(c['image']['total'])} | "
            f"{_g(c['image_train']['total'])} | {_g(c['text']['total'])} | "
            f"{_g(c['text_train']['total'])} | {c['loss']['total'] / 1e6:.3f} M (B = "
            f"{c['batch']}) | {_g(mode_flops(c, 'train', c['batch']))} |")
    lines += ["", "FLOPs per sample by op group, inference-mode forward (GFLOP, share):", "",
              "| config | tower | " + " | ".join(GROUPS) + " | largest op types |",
              "|---|---|" + "---|" * len(GROUPS) + "---|"]
    for name, c in counts.items():
        for tower in ("image", "text"):
            part = c[tower]
            total = part["total"]
            cells = [f"{_g(part['by_group'][g])} ({100 * part['by_group'][g] / total:.1f}%)"
                     for g in GROUPS]
            top = sorted(part["by_type"].items(), key=lambda kv: -kv[1])[:5]
            lines.append(f"| {name} | {tower} | " + " | ".join(cells) + " | "
                         + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in top) + " |")
    lines += ["", "Ops without a FLOP statistic (output elements per sample, inference "
              "forward): " + "; ".join(
                  f"{name} {tower}: " + ", ".join(
                      f"{k} {v:,.0f}" for k, v in sorted(c[tower]['uncounted'].items(),
                                                         key=lambda kv: -kv[1])[:4])
                  for name, c in counts.items() for tower in ("image", "text")), ""]
    lines += ["This machine's float32 rates (tf.function, median of the calls):", "",
              "| op | shape | GFLOP/s | ms a call | other processes' cores |", "|---|---|---|---|---|"]
    shapes = {"matmul": "square (--matmul-size)", "conv1x1": "[8,28,28,40] -> 240",
              "depthwise3x3": "[8,56,56,144] 3x3", "depthwise5x5": "[8,28,28,240] 5x5",
              "swish": "[8,56,56,144], 2 FLOPs / element"}
    for name, r in rates.items():
        lines.append(f"| {name} | {shapes[name]} | **{r['gflops']:.1f}** | "
                     f"{1000 * r['seconds']:.2f} | {r['other_cores']:.2f} |")
    busy = max(r["other_cores"] for r in rates.values())
    if busy > CONTENDED_CORES:
        lines += ["", f"**Not valid: other processes used up to {busy:.2f} cores while the "
                  "rates were measured** (the MFU below divides by a contended peak)."]
    lines += ["", f"Achieved model FLOP/s and MFU (fraction of the matmul peak: "
              f"{peak / 1e9:.1f} GFLOP/s, {peak_source}); samples/s from bench_vs_transformers "
              "(`--measured`); 'at group rates': the time a sample would take if every op "
              "group ran at the rate measured above for it (Conv2D at conv1x1, depthwise at "
              "depthwise3x3, matmuls at matmul, elementwise at swish), as a fraction of the "
              "measured malign time:", "",
              "| config | mode | batch | GFLOP / sample | malign samples/s | malign GFLOP/s | "
              "malign MFU | transformers samples/s | transformers GFLOP/s | transformers MFU | "
              "FLOP share: conv / depthwise / matmul / elementwise | time share at group "
              "rates: conv / depthwise / matmul / elementwise | at group rates / measured |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (name, mode), (ours, theirs) in measured.items():
        if name not in counts:
            continue
        c = counts[name]
        flops = mode_flops(c, mode, c["batch"])
        groups = mode_groups(c, mode)
        seconds = estimated_seconds(groups, rates)
        flop_share = " / ".join(f"{100 * groups[g] / sum(groups.values()):.0f}%" for g in GROUPS)
        time_share = " / ".join(f"{100 * seconds[g] / sum(seconds.values()):.0f}%"
                                for g in GROUPS)
        cells = []
        for value in (ours, theirs):
            if value is None:
                cells += ["-", "-", "-"]
            else:
                a = achieved(flops, value, peak)
                cells += [f"{value:.2f}", f"{a['flops_per_s'] / 1e9:.1f}",
                          f"**{100 * a['mfu']:.1f}%**"]
        ratio = sum(seconds.values()) * ours if ours else float("nan")
        lines.append(f"| {name} | {mode} | {c['batch']} | {_g(flops)} | " + " | ".join(cells)
                     + f" | {flop_share} | {time_share} | {100 * ratio:.0f}% |")
    if "base" in counts:
        c = counts["base"]
        lines += ["", "align-base memory per example, computed: outputs of all ops of a "
                  "training-mode forward at batch 1 (aliases and reshapes left out; upper "
                  "bound of the activations the backward keeps): image "
                  f"{c['image_train']['output_bytes'] / 2**20:.0f} MiB, "
                  f"text {c['text_train']['output_bytes'] / 2**20:.1f} MiB; weights "
                  f"{c['weights']:,} x 4 bytes = {c['weights'] * 4 / 2**30:.2f} GiB, with "
                  f"AdamW's two slots {c['weights'] * 12 / 2**30:.2f} GiB, with the gradients "
                  f"{c['weights'] * 16 / 2**30:.2f} GiB (float32)."]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="a,b,base",
                        help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--measured", default=MEASURED,
                        help="samples/s medians, 'config:mode=malign/transformers,...' "
                             "(default: the RESULTS.md figures named in MEASURED)")
    parser.add_argument("--measured-from", type=Path,
                        help="take the samples/s from the latest bench_vs_transformers "
                             "sections of this file measured on this machine (replaces "
                             "--measured; make bench passes benchmarks/RESULTS.md)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per rate")
    parser.add_argument("--quiet-wait", type=float, default=0.0,
                        help="before the rates, wait up to this many seconds until other "
                             "processes use at most --quiet-cores (0 = do not wait)")
    parser.add_argument("--quiet-cores", type=float, default=0.3)
    parser.add_argument("--peak-gflops", type=float,
                        help="the matmul peak (GFLOP/s) MFU divides by, when the --measured "
                             "throughputs come from another machine than this one")
    parser.add_argument("--rates-from", type=Path,
                        help="take the rates from a --json file of an earlier run")
    parser.add_argument("--no-rates", action="store_true",
                        help="count FLOPs only (MFU needs the rates)")
    parser.add_argument("--json", type=Path, help="also write all numbers here")
    parser.add_argument("--counts-from", type=Path,
                        help="take the FLOP counts from a --json file of an earlier run "
                             "(they depend on the code, not the machine) and only measure "
                             "the rates")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    args.config_list = [c for c in args.configs.split(",") if c]
    unknown = [c for c in args.config_list if c not in CONFIGS]
    if unknown or not args.config_list:
        parser.error(f"--configs: unknown {unknown or 'empty'}; choose from {', '.join(CONFIGS)}")
    try:
        args.measured_map = parse_measured(args.measured)
    except ValueError as error:
        parser.error(str(error))
    if args.measured_from:
        if not args.measured_from.is_file():
            parser.error(f"--measured-from {args.measured_from}: no such file")
        args.measured_map = measured_from_results(args.measured_from.read_text(), _cpu_model())
        if not args.measured_map:
            parser.error(f"--measured-from {args.measured_from}: no bench_vs_transformers "
                         f"figures of this machine ({_cpu_model()}) measured while quiet")
        args.measured = ",".join(f"{c}:{m}={a}/{b}" for (c, m), (a, b)
                                 in args.measured_map.items())
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    counts = {}
    if args.counts_from:
        saved = json.loads(args.counts_from.read_text())["counts"]
        missing = [name for name in args.config_list if name not in saved]
        if missing:
            raise SystemExit(f"{args.counts_from}: no counts of {', '.join(missing)}")
        counts = {name: saved[name] for name in args.config_list}
    for name in args.config_list if not counts else []:
        start = time.perf_counter()
        counts[name] = count_model_flops(name)
        print(f"[{name}] counted in {time.perf_counter() - start:.0f} s: image "
              f"{_g(counts[name]['image']['total'])}, text {_g(counts[name]['text']['total'])} "
              "GFLOP / sample (inference forward)", flush=True)
    if args.rates_from:
        rates = json.loads(args.rates_from.read_text())["rates"]
    elif args.no_rates:
        rates = {"matmul": {"gflops": float("nan"), "seconds": float("nan"), "flops": 0,
                            "other_cores": float("nan")}}
        rates.update({k: dict(rates["matmul"]) for k in GROUP_RATE.values() if k != "matmul"})
    else:
        import tensorflow  # noqa: F401  (loaded before waiting for a quiet moment)

        def wait():
            used = wait_for_quiet(args.quiet_cores, args.quiet_wait)
            print(f"other processes before a rate: {used:.2f} cores", flush=True)

        rates = measure_rates(args.matmul_size, args.repeats,
                              wait if args.quiet_wait else None)
    load = os.getloadavg()[0]
    cpu = _cpu_model()
    if args.measured == MEASURED and not args.peak_gflops and \
            not MEASURED_MACHINE.startswith(cpu):
        print(f"warning: the default --measured throughputs come from {MEASURED_MACHINE}, "
              f"this machine is {cpu}: MFU against its matmul rate is not valid; pass "
              "--peak-gflops (that machine's) or --measured (this machine's)", flush=True)
    report = format_report(counts, rates, args.measured_map, args.peak_gflops)
    print(report)
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "rates": rates}, indent=1))
    if args.write:
        from machine import append_result, describe_machine

        command = "python benchmarks/bench_flops.py " + shlex.join(
            argv if argv is not None else sys.argv[1:])
        body = (f"Command: `{command}`  \nMachine: {describe_machine()}  \n"
                f"1-min load average at the end: {load:.1f}  \n"
                "FLOPs counted by `tf.compat.v1.profiler.profile(graph, cmd='op', "
                "options=ProfileOptionBuilder.float_operation())` on the concrete function's "
                "graph (multiply-add = 2 FLOPs; Einsum, Sigmoid, Erf, Erfc, Tanh, Exp, Sqrt, Relu "
                "and SoftmaxCrossEntropyWithLogits given statistics by the script); training "
                "step = 3 x training-mode forward + AdamW at "
                f"{ADAMW_FLOPS_PER_WEIGHT} FLOPs per trainable weight / batch; malign models "
                "of the bench_vs_transformers configurations, random weights.\n\n" + report)
        append_result("Distance to the limit: model FLOPs, matmul peak and MFU (issue 11)",
                      body)


if __name__ == "__main__":
    main()
