"""benchmarks/bench_loss.py on a tiny batch: what it times is malign's loss and gradient
(against numpy), and the share / memory arithmetic of its table."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_loss")


def _numpy_loss_and_grads(img, txt, t, smoothing, per_replica):
    """Row-wise smoothed cross-entropy both ways over the global batch; each replica's mean
    loss; the gradient of the global mean (= the replicas' summed scaled gradients)."""
    n = len(img)
    z = img @ txt.T / t
    targets = np.eye(n) * (1 - smoothing) + smoothing / n

    def softmax(a):
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    rows = 0.5 * (-(targets * np.log(softmax(z))).sum(-1) - (targets * np.log(softmax(z.T))).sum(-1))
    replica_losses = rows.reshape(-1, per_replica).mean(-1)
    d_z = 0.5 * ((softmax(z) - targets) + (softmax(z.T) - targets).T) / n
    return replica_losses, d_z @ txt / t, d_z.T @ img / t, -(d_z * z).sum() / t


def test_timed_loss_is_malign_loss_and_gradient(bench):
    r = bench.time_loss("cpu:2", 4, 8, label_smoothing=0.1, temperature=0.5, repeats=2, warmup=1)
    assert (r["replicas"], r["per_replica"], r["global_batch"], r["dim"]) == (2, 4, 8, 8)
    assert len(r["loss_times_ms"]) == 2
    for key in ("loss_ms", "forward_ms", "gather_ms"):
        assert r[key] > 0, key
    img, txt = bench.loss_inputs(2, 4, 8)
    losses, d_img, d_txt, d_t = _numpy_loss_and_grads(img.astype(np.float64),
                                                      txt.astype(np.float64), 0.5, 0.1, 4)
    np.testing.assert_allclose(r["losses"], losses, rtol=1e-5)
    np.testing.assert_allclose(r["grad_image"], d_img, atol=1e-6)
    np.testing.assert_allclose(r["grad_text"], d_txt, atol=1e-6)
    assert r["grad_temperature"] == pytest.approx(d_t, rel=1e-4)


def test_share_rows_measured_and_estimated_steps(bench):
    loss = [{"per_replica": b, "replicas": 2, "dim": 640, "loss_ms": ms, "forward_ms": 1.0,
             "gather_ms": 0.5} for b, ms in ((4, 1.0), (256, 30.0))]
    rows = bench.share_rows(loss, [(4, 5000.0), (12, 11000.0)])
    assert rows[0]["step_measured"] and rows[0]["step_ms"] == 5000.0
    assert not rows[1]["step_measured"]
    assert rows[1]["step_ms"] == pytest.approx(2000.0 + 750.0 * 256 + 30.0)
    assert rows[1]["share"] == pytest.approx(100 * 30.0 / rows[1]["step_ms"])
    assert rows[1]["logits_bytes"] == 256 * 512 * 4
    assert rows[1]["gathered_bytes"] == 512 * 640 * 4
    text = bench.table(rows)
    assert "(est.)" in text and "| 256 | 512 |" in text and "0.50 |" in text
    with pytest.raises(ValueError):
        bench.fit_line([(4, 1.0)])
