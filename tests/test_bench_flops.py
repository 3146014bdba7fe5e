"""benchmarks/bench_flops.py without timing: its FLOP counts of tiny known graphs match the
formulas (multiply-add = 2), its configurations map to the right malign towers, and its MFU
arithmetic on given numbers."""

from __future__ import annotations

import pytest
from benchmark_helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_flops")


def _graph(fn, *specs):
    import tensorflow as tf

    return tf.function(fn).get_concrete_function(*specs).graph


def test_dense_layer_is_two_in_out_per_sample_plus_bias(bench):
    import keras
    import tensorflow as tf

    layer = keras.layers.Dense(7)
    counted = bench.count_graph_flops(_graph(layer, tf.TensorSpec([1, 5], tf.float32)))
    assert counted["by_type"]["MatMul"] == 2 * 5 * 7
    assert counted["by_type"]["BiasAdd"] == 7
    assert counted["total"] == 2 * 5 * 7 + 7
    assert counted["by_group"]["MatMul/BatchMatMul/Einsum"] == 70


def test_conv2d_depthwise_and_elementwise(bench):
    import tensorflow as tf

    def fn(x, w, d):
        y = tf.nn.conv2d(x, w, 1, "SAME")                                   # [1, 6, 6, 8]
        z = tf.nn.depthwise_conv2d(y, d, [1, 1, 1, 1], "SAME")              # [1, 6, 6, 8]
        return z * tf.sigmoid(z)                                           # swish

    counted = bench.count_graph_flops(_graph(
        fn, tf.TensorSpec([1, 6, 6, 3]), tf.TensorSpec([3, 3, 3, 8]), tf.TensorSpec([5, 5, 8, 1])))
    elements = 6 * 6 * 8
    assert counted["by_type"]["Conv2D"] == 2 * elements * 3 * 3 * 3
    assert counted["by_type"]["DepthwiseConv2dNative"] == 2 * elements * 5 * 5
    assert counted["by_type"]["Sigmoid"] == elements  # registered by the script
    assert counted["by_type"]["Mul"] == elements
    assert counted["by_group"]["elementwise"] == 2 * elements


def test_einsum_is_two_times_the_index_space(bench):
    import tensorflow as tf

    bench.register_flop_statistics()
    graph = _graph(lambda a, b: tf.einsum("abc,cde->abde", a, b),
                   tf.TensorSpec([2, 3, 4]), tf.TensorSpec([4, 5, 6]))
    einsum = [op for op in graph.get_operations() if op.type == "Einsum"]
    assert einsum, "tf.einsum traced to another op"
    from tensorflow.python.framework import ops

    assert ops.get_stats_for_node_def(graph, einsum[0].node_def, "flops").value == \
        2 * 2 * 3 * 4 * 5 * 6


def test_configurations_map_to_the_benchmarked_towers(bench):
    a = bench.model_config("a")
    assert (a.image.image_size, a.image.width_coefficient, a.image.depth_coefficient) == \
        (128, 1.0, 1.0)
    assert (a.text.num_layers, a.text.hidden_dim, a.text.sequence_length) == (4, 256, 64)
    base = bench.model_config("base")
    assert (base.image.image_size, base.image.width_coefficient, base.text.hidden_dim) == \
        (289, 2.0, 768)


def test_mfu_arithmetic(bench):
    counts = {"image": {"total": 4e8}, "text": {"total": 2e8},
              "image_train": {"total": 5e8}, "text_train": {"total": 3e8},
              "loss": {"total": 1e5}, "trainable": 1_000_000}
    train = bench.mode_flops(counts, "train", 10)
    assert train == pytest.approx(3 * (5e8 + 3e8 + 1e5) + 15 * 1_000_000 / 10)
    assert bench.mode_flops(counts, "text-grad", 10) == 9e8
    assert bench.mode_flops(counts, "image", 10) == 4e8
    result = bench.achieved(train, 20.0, 200e9)
    assert result["flops_per_s"] == pytest.approx(train * 20)
    assert result["mfu"] == pytest.approx(train * 20 / 200e9)
    rates = {"matmul": {"gflops": 200.0}, "swish": {"gflops": 2.0}}
    seconds = bench.estimated_seconds({"MatMul/BatchMatMul/Einsum": 4e9, "elementwise": 1e8},
                                      rates)
    assert seconds == pytest.approx({"MatMul/BatchMatMul/Einsum": 0.02, "elementwise": 0.05})
    assert bench.parse_measured("a:train=22.91/20.80,base:text=15/") == {
        ("a", "train"): (22.91, 20.80), ("base", "text"): (15.0, None)}
    with pytest.raises(ValueError):
        bench.parse_measured("a:walk=1/2")
    # The default figures parse and name only known configurations and modes.
    assert {c for c, _ in bench.parse_measured(bench.MEASURED)} <= set(bench.CONFIGS)


def test_text_counts_follow_the_real_tokens(bench):
    """A text count is the exact quadratic in the caption length (token-wise ops, attention
    scores), averaged over the benchmark's captions: the padded BERT counted at 8 and 16
    tokens without padding is recovered from counts at other lengths."""
    import keras_hub
    import tensorflow as tf

    backbone = keras_hub.models.BertBackbone(vocabulary_size=50, num_layers=1, num_heads=2,
                                             hidden_dim=8, intermediate_dim=16,
                                             max_sequence_length=32)
    fn = tf.function(lambda ids, mask: backbone({"token_ids": ids, "segment_ids": ids * 0,
                                                 "padding_mask": mask})["sequence_output"])

    def count(n):
        return bench.count_graph_flops(
            fn.get_concrete_function(*[tf.TensorSpec([1, n], tf.int32)] * 2).graph)

    counted = {n: count(n) for n in (4, 12, 32)}
    expected = (count(8)["total"] + count(16)["total"]) / 2
    assert bench.mean_over_lengths(counted, [8, 16])["total"] == pytest.approx(expected)
    assert counted[32]["total"] > counted[12]["total"] > counted[4]["total"]


def test_measured_figures_come_from_this_machines_quiet_rows(bench):
    def section(machine, row_cores, median):
        return (f"## malign vs transformers AlignModel (PyTorch): a\n\nMachine: {machine}, 2 "
                f"cores\n\n| config | mode |\n|---|---|\n| a | train | 32 | 1.0 / **{median}** "
                f"/ 3.0 | 1.0 / **2.00** / 3.0 | **1.00x** | {row_cores} / 0.01 |\n")

    text = (section("CPU X", "0.00", "20.00") + section("CPU Y", "0.00", "30.00")
            + section("CPU X", "0.90", "40.00") + "## Something else\n\n"
            + section("CPU X", "0.10", "25.50"))
    assert bench.measured_from_results(text, "CPU X") == {("a", "train"): (25.5, 2.0)}
    assert bench.measured_from_results(text[:text.index("## Something")], "CPU X") == {
        ("a", "train"): (20.0, 2.0)}  # the contended 40.00 row is skipped
    assert bench.measured_from_results(text, "CPU Z") == {}
