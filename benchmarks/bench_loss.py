"""The cross-replica contrastive loss's share of the train step, and its logits' memory.

For each per-replica batch ``b`` (``--batches``) under a ``cpu:N`` strategy (``--strategy``,
``B = N * b`` the global batch), one process times ``malign.losses.contrastive_loss`` as
``AlignModel.compute_loss`` runs it in a train step: under ``strategy.run`` in a
``tf.function``, each replica holds [b, D] float32 L2-normalised image and text embeddings
(``D`` the preset's embedding width, 640 for align-base and the students), the loss gathers
the global batch (``malign.distributed.gather_batch``), forms the two [b, B] logits, the
smoothed softmax cross-entropy both ways, is scaled with
``malign.distributed.scale_loss_for_replicas``, and its gradient with respect to the
embeddings and the temperature variable is taken (forward + backward). Also timed: the
forward pass alone and the gather alone (forward + backward, all_gather of both [b, D]
tensors and the gradient back). Each figure is the median over ``--repeats`` calls after
``--warmup`` calls.

The train step of the preset (Keras ``fit`` on random in-memory batches, the step of
``bench_memory.py``, tool ``plain``) is timed in a process per ``--step-batches`` per-replica
batch. A CPU step at per-replica batch 256-512 would take minutes, so unless a batch is
measured itself, its step is estimated as ``a + s * b + loss(b)``: the straight line
``a + s * b`` through the measured steps (towers linear per example, the optimizer update
constant; the line's fit is printed so the linearity can be checked, with three or more
step batches it is a least-squares fit) plus the loss measured at ``b`` (the loss at the small
measured batches, well under a millisecond, is left inside the line).

Memory, computed (not measured): per replica, each of the two logits matrices (image->text
and text->image) is [b, B] float32, ``b * B * 4`` bytes, and the softmax and its gradient
hold temporaries of the same shape; each of the two gathered embedding matrices is [B, D]
float32, ``B * D * 4`` bytes.

Usage:
    python benchmarks/bench_loss.py --preset student-b0-bert-mini --strategy cpu:2 \
        --batches 64,128,256,512 --step-batches 4,8,12 --write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # measure the malign of this checkout
TARGET_SHARE = 5.0  # issue 11: the loss costs under 5% of the step at per-replica batch 256


def loss_inputs(num_replicas: int, per_replica: int, dim: int,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random L2-normalised embeddings of a global batch, replica r's rows at r*b:(r+1)*b.

    Args:
        num_replicas: N replicas.
        per_replica: b rows per replica.
        dim: embedding width D.
        seed: numpy seed.

    Returns:
        ``(images, texts)``: float32 numpy arrays [N * b, D], unit rows.

    Example:
        >>> loss_inputs(2, 3, 4)[0].shape
        (6, 4)
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        x = rng.standard_normal((num_replicas * per_replica, dim)).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out[0], out[1]


def logits_memory(per_replica: int, num_replicas: int, dim: int) -> dict:
    """The loss's big tensors per replica, computed: bytes of one [b, B] float32 logits
    matrix (there are two, image->text and text->image) and of one gathered [B, D] float32
    embedding matrix (two: images and texts).

    Example:
        >>> logits_memory(256, 2, 640)["logits_bytes"]
        524288
    """
    global_batch = per_replica * num_replicas
    return {"logits_bytes": per_replica * global_batch * 4,
            "gathered_bytes": global_batch * dim * 4}


def _median_ms(fn, repeats: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), times


def time_loss(strategy_spec: str, per_replica: int, dim: int, *, label_smoothing: float = 0.1,
              temperature: float = 1.0, min_temperature: float = 1e-3,
              max_temperature: float = 100.0, repeats: int = 10, warmup: int = 3,
              seed: int = 0) -> dict:
    """Times the cross-replica contrastive loss, forward + backward, as a train step runs it.

    In a ``tf.function`` under ``strategy.run``: per replica ``malign.losses.contrastive_loss``
    of [b, D] embeddings (rows of ``loss_inputs``) against the gathered global batch, with the
    temperature a variable clipped as ``AlignModel.temperature`` clips it, scaled by
    ``malign.distributed.scale_loss_for_replicas``, and its gradient with respect to both
    embeddings and the temperature variable. Also the forward pass alone and the gather
    alone (``malign.distributed.gather_batch`` of both tensors, forward + backward).

    Args:
        strategy_spec: ``malign.distributed.get_strategy`` spec, e.g. ``"cpu:2"``.
        per_replica: b, rows per replica.
        dim: embedding width D.
        label_smoothing: as the model config's.
        temperature: initial value of the temperature variable.
        min_temperature, max_temperature: its clip range (the model config's).
        repeats: timed calls per figure (median reported).
        warmup: untimed calls first (the first traces).
        seed: seed of the embeddings.

    Returns:
        dict: ``loss_ms``, ``forward_ms``, ``gather_ms`` (medians, milliseconds), ``loss_times_ms``
        (every timed full call), ``replicas``, ``per_replica``, ``global_batch``, ``dim``,
        ``losses`` (each replica's unscaled loss, float), ``grad_image`` / ``grad_text``
        (numpy [B, D] float32, the replicas' gradients of the scaled loss, stacked in replica
        order) and ``grad_temperature`` (float, summed over replicas, as Keras sums them).

    Example:
        >>> r = time_loss("cpu:2", 4, 8, repeats=1, warmup=1)
        >>> r["global_batch"], r["grad_image"].shape
        (8, (8, 8))
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    import malign

    strategy = malign.distributed.get_strategy(strategy_spec)
    n = strategy.num_replicas_in_sync
    images, texts = loss_inputs(n, per_replica, dim, seed)
    with strategy.scope():
        temperature_variable = tf.Variable(temperature, dtype=tf.float32, name="temperature")

    def rows(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group * per_replica:
                                          (ctx.replica_id_in_sync_group + 1) * per_replica]))

    image_emb, text_emb = rows(images), rows(texts)
    upstream = tf.constant(np.random.default_rng(seed + 1).standard_normal(
        (n * per_replica, dim)).astype(np.float32))

    def replica_loss(image, text):
        clipped = tf.clip_by_value(tf.convert_to_tensor(temperature_variable),
                                   min_temperature, max_temperature)
        return malign.losses.contrastive_loss(image, text, clipped,
                                              label_smoothing=label_smoothing)

    def full(image, text):
        with tf.GradientTape() as tape:
            tape.watch([image, text])
            loss = replica_loss(image, text)
            scaled = malign.distributed.scale_loss_for_replicas(loss)
        d_image, d_text, d_temperature = tape.gradient(
            scaled, [image, text, temperature_variable])
        return loss, d_image, d_text, d_temperature

    def gather(image, text):
        with tf.GradientTape() as tape:
            tape.watch([image, text])
            (all_images, all_texts), _ = malign.distributed.gather_batch(image, text)
        return tape.gradient([all_images, all_texts], [image, text],
                             output_gradients=[upstream, upstream])

    full_step = tf.function(lambda: strategy.run(full, args=(image_emb, text_emb)))
    forward_step = tf.function(lambda: strategy.run(replica_loss, args=(image_emb, text_emb)))
    gather_step = tf.function(lambda: strategy.run(gather, args=(image_emb, text_emb)))

    def wait(outputs):
        for t in tf.nest.flatten(outputs):
            for v in strategy.experimental_local_results(t):
                v.numpy()

    loss_ms, loss_times = _median_ms(lambda: wait(full_step()), repeats, warmup)
    forward_ms, _ = _median_ms(lambda: wait(forward_step()), repeats, warmup)
    gather_ms, _ = _median_ms(lambda: wait(gather_step()), repeats, warmup)
    loss, d_image, d_text, d_temperature = full_step()
    local = strategy.experimental_local_results
    return {"replicas": n, "per_replica": per_replica, "global_batch": n * per_replica,
            "dim": dim, "loss_ms": loss_ms, "forward_ms": forward_ms, "gather_ms": gather_ms,
            "loss_times_ms": loss_times, "losses": [float(v) for v in local(loss)],
            "grad_image": np.concatenate([v.numpy() for v in local(d_image)]),
            "grad_text": np.concatenate([v.numpy() for v in local(d_text)]),
            "grad_temperature": float(sum(float(v) for v in local(d_temperature)))}


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of step ms against per-replica batch.

    Example:
        >>> fit_line([(4, 100.0), (12, 300.0)])
        (0.0, 25.0)
    """
    if len(points) < 2:
        raise ValueError("the step estimate needs steps measured at two per-replica batches")
    xs, ys = zip(*points)
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
        (x - mean_x) ** 2 for x in xs)
    return mean_y - slope * mean_x, slope


def share_rows(loss_results: list[dict], step_points: list[tuple[int, float]]) -> list[dict]:
    """Per per-replica batch: loss ms, step ms (measured where that batch was measured, else
    ``intercept + slope * b + loss ms``), the loss's share of the step in percent, memory.

    Example:
        >>> r = share_rows([{"per_replica": 8, "replicas": 2, "dim": 4, "loss_ms": 5.0,
        ...                  "forward_ms": 2.0, "gather_ms": 1.0}], [(4, 100.0), (12, 300.0)])
        >>> r[0]["step_ms"], r[0]["share"], r[0]["step_measured"]
        (205.0, 2.4390243902439024, False)
    """
    measured = dict(step_points)
    intercept, slope = fit_line(step_points)
    rows = []
    for r in loss_results:
        b = r["per_replica"]
        step = measured.get(b, intercept + slope * b + r["loss_ms"])
        rows.append({**{k: r[k] for k in ("per_replica", "replicas", "dim", "loss_ms",
                                          "forward_ms", "gather_ms")},
                     "global_batch": b * r["replicas"], "step_ms": step,
                     "step_measured": b in measured, "share": 100 * r["loss_ms"] / step,
                     **logits_memory(b, r["replicas"], r["dim"])})
    return rows


def time_step(preset: str, per_replica: int, strategy_spec: str, steps: int, warmup: int,
              overrides: dict) -> dict:
    """The median train step of a preset at a per-replica batch: bench_memory's ``run_one``
    (Keras ``fit`` of the plain step, random in-memory batches), in this process.

    Args:
        preset: ``AlignModel.from_preset`` name.
        per_replica: b; the global batch is b times the strategy's replicas.
        strategy_spec: ``malign.distributed.get_strategy`` spec.
        steps: timed steps (median); warmup: untimed steps first (the first traces).
        overrides: ``from_preset`` overrides, e.g. ``{"image_size": 128}``.

    Returns:
        ``run_one``'s dict (``median_step_ms`` in milliseconds, ``weights``, ``image_size``,
        memory in MiB) plus ``per_replica``.

    Example:
        >>> time_step("tiny", 2, "cpu:2", 2, 1, {})["median_step_ms"] > 0  # doctest: +SKIP
        True
    """
    sys.path.insert(0, HERE)
    from bench_memory import run_one

    import malign

    n = malign.distributed.get_strategy(strategy_spec).num_replicas_in_sync
    r = run_one(preset, per_replica * n, "plain", 8, steps, warmup, strategy_spec, overrides)
    return {**r, "per_replica": per_replica}


def _worker(kind: str, spec: dict) -> dict:
    if kind == "loss":
        r = time_loss(**spec)
        return {k: v for k, v in r.items() if not k.startswith("grad_")}
    return time_step(**spec)


def _run(kind: str, spec: dict) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                           json.dumps({"kind": kind, "spec": spec})], capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{kind} {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def table(rows: list[dict]) -> str:
    """The Markdown result table of ``share_rows``: times in ms, shares in percent, memory
    in MiB (2**20 bytes); estimated steps marked ``(est.)``.

    Example:
        >>> print(table([]).splitlines()[1])
        |---|---|---|---|---|---|---|---|---|
    """
    out = ["| per-replica batch b | global batch B | loss fwd+bwd ms | of which gather ms | "
           "loss forward ms | train step ms | loss share of step | one [b, B] logits MiB "
           "(x2 directions) | one gathered [B, D] MiB (x2) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        step = f"{r['step_ms']:.0f}" + ("" if r["step_measured"] else " (est.)")
        out.append(f"| {r['per_replica']} | {r['global_batch']} | {r['loss_ms']:.1f} | "
                   f"{r['gather_ms']:.1f} | {r['forward_ms']:.1f} | {step} | "
                   f"{r['share']:.2f}% | {_mib(r['logits_bytes'])} | "
                   f"{_mib(r['gathered_bytes'])} |")
    return "\n".join(out)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None):
    load_start = os.getloadavg()[0]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="student-b0-bert-mini",
                        help="gives D, label smoothing and temperature range, and the step")
    parser.add_argument("--strategy", default="cpu:2")
    parser.add_argument("--batches", default="64,128,256,512", help="per-replica batches")
    parser.add_argument("--step-batches", default="4,8,12",
                        help="per-replica batches at which the train step is measured")
    parser.add_argument("--repeats", type=int, default=10, help="timed loss calls (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed loss calls first")
    parser.add_argument("--steps", type=int, default=3, help="timed train steps (median)")
    parser.add_argument("--step-warmup", type=int, default=1)
    parser.add_argument("--image-size", type=int, help="override of the preset's image size")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print("RESULT " + json.dumps(_worker(job["kind"], job["spec"])), flush=True)
        return
    from malign.presets import get_preset

    overrides = {"image_size": args.image_size} if args.image_size else {}
    config = get_preset(args.preset, **overrides)
    dim = config.image_embedding_dim
    loss_results = []
    for b in _ints(args.batches):
        r = _run("loss", dict(strategy_spec=args.strategy, per_replica=b, dim=dim,
                              label_smoothing=config.label_smoothing,
                              temperature=config.temperature_init,
                              min_temperature=config.min_temperature,
                              max_temperature=config.max_temperature,
                              repeats=args.repeats, warmup=args.warmup))
        loss_results.append(r)
        print(f"loss b={b:4d} B={r['global_batch']:5d} D={dim}: fwd+bwd {r['loss_ms']:.1f} ms "
              f"(gather {r['gather_ms']:.1f}, forward {r['forward_ms']:.1f})", flush=True)
    steps = []
    for b in _ints(args.step_batches):
        r = _run("step", dict(preset=args.preset, per_replica=b, strategy_spec=args.strategy,
                              steps=args.steps, warmup=args.step_warmup, overrides=overrides))
        steps.append(r)
        print(f"step b={b:4d}: {r['median_step_ms']:.0f} ms", flush=True)
    points = [(r["per_replica"], r["median_step_ms"]) for r in steps]
    intercept, slope = fit_line(points)
    rows = share_rows(loss_results, points)
    step_lines = ", ".join(f"b={b}: {ms:.0f} ms (line {intercept + slope * b:.0f})"
                           for b, ms in points)
    fit = (f"Train step measured ({args.preset}, {steps[0]['weights']:,} weights, "
           f"{steps[0]['image_size']} px, {args.strategy}, median of {steps[0]['steps']} steps "
           f"after {args.step_warmup} warm-up, one process each): {step_lines}; line "
           f"{intercept:.0f} ms + {slope:.1f} ms x b, i.e. {slope:.1f} ms per per-replica "
           f"example ({slope / loss_results[0]['replicas']:.1f} ms per example of the global "
           "batch on this machine).")
    at_256 = [r for r in rows if r["per_replica"] == 256]
    verdict = ""
    if at_256:
        ok = at_256[0]["share"] < TARGET_SHARE
        verdict = (f"At per-replica batch 256 the loss is {at_256[0]['share']:.2f}% of the step: "
                   f"{'under' if ok else 'NOT under'} the {TARGET_SHARE:.0f}% target.")
    text = table(rows)
    print(text)
    print(fit)
    print(verdict)
    if args.write:
        from machine import append_result, describe_machine

        command = "python benchmarks/bench_loss.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        body = (f"Command: `{command}`  \nMachine: {describe_machine()}  \n"
                f"1-min load average at the start and end: {load_start:.1f} / "
                f"{os.getloadavg()[0]:.1f}  \n"
                f"Loss: `malign.losses.contrastive_loss` under `strategy.run` in a `tf.function`, "
                f"{args.strategy}, D = {dim}, label smoothing {config.label_smoothing}, gradient "
                "of the replica-scaled loss with respect to both [b, D] embeddings and the "
                f"temperature; median of {args.repeats} calls after {args.warmup} warm-up, one "
                "process per batch. Gather = `distributed.gather_batch` of both embeddings, "
                "forward + backward. Step ms marked (est.) = the straight line through the "
                "measured steps at b plus the loss at b. Memory computed: b x B x 4 bytes per "
                "logits matrix, B x D x 4 bytes per gathered embedding matrix, per replica.  \n"
                f"{fit}  \n{verdict}\n\n{text}")
        append_result(f"Contrastive loss share of the train step: {args.preset}, "
                      f"{args.strategy}", body)


if __name__ == "__main__":
    main()
