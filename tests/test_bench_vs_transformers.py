"""benchmarks/bench_vs_transformers.py without torch: arguments, inputs, the result table.

The measurement itself needs torch and transformers (the ``bench`` extra); the one test
that runs the transformers side is skipped without them.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from benchmark_helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_vs_transformers")


def test_defaults_and_lists(bench):
    args = bench.parse_args([])
    assert args.config_list == ["a"] and args.mode_list == ["train", "image", "text"]
    assert args.repeats == 5 and args.warmup == 3 and args.steps == 5 and args.quiet_wait == 0
    args = bench.parse_args(["--configs", "a,base", "--modes", "image", "--torch-threads", "1"])
    assert args.config_list == ["a", "base"] and args.mode_list == ["image"]
    assert args.torch_threads == 1


@pytest.mark.parametrize("argv", [["--configs", "c"], ["--modes", "infer"], ["--configs", ","],
                                  ["--repeats", "0"]])
def test_bad_arguments_name_the_choices(bench, argv, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_every_config_has_a_batch_and_an_architecture(bench):
    for name, spec in bench.CONFIGS.items():
        assert spec["batch"] > 0 and spec["sequence_length"] == 64, name
        if "config_file" in spec:
            assert Path(spec["config_file"]).is_file(), name
        else:
            assert spec["vision"]["image_size"] in (128, 224), name
    assert bench.CONFIGS["a"]["text"]["num_hidden_layers"] == 4
    assert bench.CONFIGS["a"]["text"]["hidden_size"] == 256


def test_inputs_are_fixed_and_shaped_like_a_batch(bench):
    a = bench._inputs(4, 16, 10, 500)
    b = bench._inputs(4, 16, 10, 500)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["images"].shape == (4, 16, 16, 3) and a["images"].dtype == np.float32
    assert 0.0 <= a["images"].min() and a["images"].max() <= 1.0
    ids, mask = a["token_ids"], a["padding_mask"]
    assert ids.dtype == mask.dtype == np.int32 and ids.shape == (4, 10)
    assert (ids[:, 0] == 101).all()                       # [CLS]
    lengths = mask.sum(axis=1)
    assert (ids[np.arange(4), lengths - 1] == 102).all()  # [SEP]
    assert (ids[mask == 0] == 0).all()                    # padding


def _run(samples_per_s: float, other: float = 0.1) -> dict:
    return {"samples_per_s": samples_per_s, "other_cores": other}


def test_summary_takes_medians_and_their_ratio(bench):
    measurement = {"config": "a", "mode": "train", "batch": 32, "runs": {
        "malign": [_run(30.0), _run(10.0), _run(20.0)],
        "transformers": [_run(5.0), _run(15.0, 0.5), _run(10.0)],
    }}
    row = bench.summarize(measurement)
    assert row["malign"] == {"min": 10.0, "median": 20.0, "max": 30.0, "n": 3,
                             "other_cores": 0.1}
    assert row["transformers"]["median"] == 10.0
    assert row["ratio"] == pytest.approx(2.0)
    table = bench.format_table([row]).splitlines()
    assert len(table) == 3 and table[0].count("|") == table[1].count("|") == table[2].count("|")
    assert "| a | train | 32 | 10.00 / **20.00** / 30.00 | 5.00 / **10.00** / 15.00 | **2.00x** |" \
        in table[2]


def test_cpu_meters(bench):
    busy = bench.cpu_busy_seconds()
    assert math.isnan(busy) or busy >= 0
    meter = bench.ContentionMeter()
    meter.start()
    time.sleep(0.05)
    assert meter.other_cores() >= 0 or math.isnan(meter.other_cores())
    assert bench.wait_for_quiet(max_cores=100.0, timeout=0.0, sample=0.01) >= 0


def test_transformers_side_builds_a_checkpoint(bench, tmp_path):
    pytest.importorskip("torch", reason="the transformers side needs torch (pip install -e .[bench])")
    pytest.importorskip("transformers", reason="pip install -e .[bench]")
    spec = dict(bench.CONFIGS["a"], vision=dict(bench.CONFIGS["a"]["vision"], image_size=32,
                                                width_coefficient=0.25, depth_coefficient=0.25),
                text=dict(bench.CONFIGS["a"]["text"], vocab_size=2000, num_hidden_layers=1,
                          hidden_size=32, num_attention_heads=2, intermediate_size=64))
    made = bench.torch_make_checkpoint(spec, tmp_path)
    assert (tmp_path / "transformers" / "config.json").is_file()
    parity = np.load(tmp_path / "parity.npz")
    assert np.isfinite(parity["image_embeds"]).all() and np.isfinite(parity["text_embeds"]).all()
    assert made["counts"]["weights"] > made["counts"]["parameters"]
