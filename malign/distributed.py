"""Distribution strategies from a spec string; the only home of collectives.

Every cross-replica operation malign performs (gathering embeddings for the
global-batch contrastive loss, scaling the loss for Keras' gradient sum) is
defined here, so the numerics of distributed training can be read, and tested,
in one file.

Example:
    >>> strategy = get_strategy("default")
    >>> strategy.num_replicas_in_sync
    1
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

__all__ = [
    "get_strategy",
    "configure_logical_cpus",
    "check_global_batch",
    "gather_batch",
    "broadcast_from_replica",
    "sum_to_replica",
    "scale_loss_for_replicas",
    "num_replicas",
    "replica_id",
    "device_type",
    "logs_for_keras_reduce",
    "all_replicas_finite",
    "any_worker",
]


def configure_logical_cpus(n: int) -> list:
    """Splits the host CPU into ``n`` logical devices (must run before TF initialises).

    If the runtime is already initialised with at least ``n`` logical CPUs, nothing
    changes. Returns the logical CPU devices.

    Args:
        n: number of logical CPU devices wanted.

    Example:
        >>> len(configure_logical_cpus(1)) >= 1
        True
    """
    if n < 1:
        raise ValueError(f"cpu:N needs N >= 1, got {n}")
    cpus = tf.config.list_physical_devices("CPU")
    try:
        existing = tf.config.get_logical_device_configuration(cpus[0])
        if not existing or len(existing) < n:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * n
            )
    except RuntimeError:
        pass  # already initialised; checked below
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < n:
        raise RuntimeError(
            f"strategy 'cpu:{n}' needs {n} logical CPU devices but TensorFlow was already "
            f"initialised with {len(logical)}; call malign.distributed.configure_logical_cpus({n}) "
            "(or get_strategy) before running any TensorFlow op"
        )
    return logical


# Strategies made in this process, by spec: see get_strategy.
_STRATEGIES: dict[tuple[str, str | None], tf.distribute.Strategy] = {}


def get_strategy(spec: str = "default", tpu: str | None = None) -> tf.distribute.Strategy:
    """Returns a ``tf.distribute`` strategy for a spec string.

    The same spec gives the same strategy object for the life of the process (a second
    ``train()``, a distillation after training, a test after another): two
    MirroredStrategy objects over the same devices clash in their collective instance
    keys once both have run ("Collective instance 100 expected type 2 ... but got type
    0"), a TPU system is initialised once, and MultiWorkerMirroredStrategy can be made
    only once per process.

    Args:
        spec: one of
            ``"tpu"`` / ``"tpu:NAME"``: TPUStrategy over a TPUClusterResolver (``tpu`` or
            ``NAME`` is the TPU name or grpc address; empty = the local/default TPU);
            ``"mirrored"``: MirroredStrategy over all local GPUs (CPU if none);
            ``"multiworker"``: MultiWorkerMirroredStrategy configured from ``TF_CONFIG``;
            ``"cpu:N"``: MirroredStrategy over N logical CPU devices (tests, simulation);
            ``"default"``: the default (no-op) strategy on one device.
        tpu: optional TPU name for ``"tpu"``.

    Raises:
        ValueError: for an unknown spec, naming it and the valid ones.

    Example:
        >>> get_strategy("cpu:1").num_replicas_in_sync
        1
    """
    spec = (spec or "default").strip().lower()
    if spec == "default":
        return tf.distribute.get_strategy()
    key = (spec, tpu)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = _make_strategy(spec, tpu)
    return _STRATEGIES[key]


def _mirrored(devices: list[str] | None) -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy whose collective group keys no earlier one in this process used.

    Every MirroredStrategy numbers its collective groups from ``1 + _collective_key_base``;
    two over different device counts (``cpu:2`` then ``cpu:4``) would both use group 1,
    and the second fails at its first batch-norm all-reduce ("joining a group with size4,
    but that group has size 2 (group_key=1)"). Each one malign makes starts 100,000 keys
    after the previous (as TensorFlow's own ``strategy_combinations`` does for its tests).
    """
    global _KEY_BASE
    _KEY_BASE += 100_000
    tf.distribute.MirroredStrategy._collective_key_base = _KEY_BASE
    return tf.distribute.MirroredStrategy(devices)


_KEY_BASE = 0


def _make_strategy(spec: str, tpu: str | None) -> tf.distribute.Strategy:
    if spec.startswith("cpu:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"strategy spec {spec!r}: expected cpu:N with an integer N") from None
        devices = configure_logical_cpus(n)
        return _mirrored([d.name for d in devices[:n]])
    if spec == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        return _mirrored([d.name for d in gpus] or None)
    if spec == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("strategy 'multiworker' needs the TF_CONFIG environment variable "
                             "(cluster and task of this worker)")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as error:
            raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from None
        communication = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=communication)
    if spec == "tpu" or spec.startswith("tpu:"):
        name = tpu if tpu is not None else (spec.split(":", 1)[1] if ":" in spec else "")
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(
        f"unknown strategy spec {spec!r}; use tpu[:NAME], mirrored, multiworker, cpu:N or default"
    )


def device_type(strategy: tf.distribute.Strategy | None = None) -> str:
    """"TPU", "GPU" or "CPU": the device type the strategy computes on."""
    strategy = strategy or tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "TPU"
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: whatever TensorFlow places ops on
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or ["/cpu:0"]
    name = devices[0].upper()
    if "GPU" in name:
        return "GPU"
    if "TPU" in name:
        return "TPU"
    return "CPU"


def check_global_batch(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """Returns the per-replica batch size; errors when the batch does not divide.

    Args:
        global_batch_size: examples per step over all replicas.
        strategy: the strategy that will run the step.

    Example:
        >>> check_global_batch(8, get_strategy("default"))
        8
    """
    n = strategy.num_replicas_in_sync
    if global_batch_size % n:
        raise ValueError(
            f"training.global_batch_size={global_batch_size} is not divisible by the "
            f"{n} replicas of the strategy; use a multiple of {n}"
        )
    return global_batch_size // n


def _replica_context() -> tf.distribute.ReplicaContext | None:
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def num_replicas() -> int:
    """Replicas in sync in the current context (1 outside a distributed step)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        return tf.distribute.get_strategy().num_replicas_in_sync
    return ctx.num_replicas_in_sync


def replica_id() -> tf.Tensor:
    """This replica's index in the sync group (0 outside a distributed step)."""
    ctx = _replica_context()
    if ctx is None:
        return tf.constant(0, tf.int32)
    return tf.cast(ctx.replica_id_in_sync_group, tf.int32)


def gather_batch(*tensors: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
    """Concatenates each tensor's batch over all replicas, with gradients.

    Inside a replica context with several replicas, every replica gets the global
    batch (replica 0's rows first) via ``ReplicaContext.all_gather``, whose gradient
    sends each replica the slice of the upstream gradient for its own rows, so
    gradients flow back through the gather. Elsewhere the tensors pass through.

    Args:
        *tensors: tensors of shape [local_batch, ...], same local batch on every replica.

    Returns:
        ``(gathered, offset)``: the global tensors and the row offset of this replica's
        local batch inside them (``replica_id * local_batch``).

    Example:
        >>> (g,), offset = gather_batch(tf.ones((2, 3)))
        >>> g.shape, int(offset)
        (TensorShape([2, 3]), 0)
    """
    ctx = _replica_context()
    if ctx is None:
        return list(tensors), tf.constant(0, tf.int32)
    gathered = [ctx.all_gather(t, axis=0) for t in tensors]
    local = tf.shape(tensors[0])[0]
    offset = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * local
    return gathered, offset


def broadcast_from_replica(tensor: tf.Tensor, source: int) -> tf.Tensor:
    """Replica ``source``'s ``tensor`` on every replica (no gradient bookkeeping needed).

    Inside a replica context with several replicas it is an all-reduce (SUM) of the tensor
    masked to zero on every replica but ``source``: every replica receives one replica's
    [b, ...] tensor, never the whole global batch at once (the chunked sigmoid loss passes
    the replicas' text embeddings round this way, one replica at a time). Elsewhere the
    tensor passes through. Every replica must call it with the same ``source`` sequence.

    Args:
        tensor: this replica's tensor; same shape on every replica.
        source: the index of the replica whose tensor is wanted, in [0, num_replicas).

    Example:
        >>> broadcast_from_replica(tf.ones((2, 3)), 0).shape
        TensorShape([2, 3])
    """
    ctx = _replica_context()
    if ctx is None:
        return tensor
    mine = tf.cast(tf.equal(replica_id(), source), tensor.dtype)
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tensor * mine)


def sum_to_replica(tensor: tf.Tensor, target: int) -> tf.Tensor:
    """The sum over replicas of ``tensor``, kept by replica ``target`` (zero elsewhere).

    The reverse of ``broadcast_from_replica``: every replica's gradient with respect to
    the tensor it received from ``target`` is summed and handed back to its owner.
    Outside a multi-replica context the tensor passes through.

    Args:
        tensor: this replica's contribution; same shape on every replica.
        target: the index of the replica that keeps the sum.

    Example:
        >>> sum_to_replica(tf.ones((2, 3)), 0).shape
        TensorShape([2, 3])
    """
    ctx = _replica_context()
    if ctx is None:
        return tensor
    total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tensor)
    return total * tf.cast(tf.equal(replica_id(), target), tensor.dtype)


def scale_loss_for_replicas(loss: tf.Tensor) -> tf.Tensor:
    """Divides a replica's loss by the replica count: THE one place of loss scaling.

    Why: Keras ``fit`` under a ``tf.distribute`` strategy computes each replica's
    gradient of the loss that ``compute_loss`` returns and then *sums* the
    replicas' gradients (the optimizer's cross-replica all-reduce is a SUM). Each
    replica's contrastive loss is already the mean over its local rows against the
    global batch, so the global-batch mean is the mean of the replica losses, and its
    gradient is the sum of the replicas' gradients of ``loss / num_replicas``.
    Without this division a step is ``num_replicas`` times too large. Keras' loss
    tracker undoes this scaling for the displayed loss.

    Args:
        loss: a scalar loss of this replica.

    Example:
        >>> float(scale_loss_for_replicas(tf.constant(2.0)))
        2.0
    """
    n = num_replicas()
    if n == 1:
        return loss
    return loss * tf.cast(1.0 / n, loss.dtype)


def all_replicas_finite(tensors) -> tf.Tensor:
    """True (a bool scalar) when every tensor on every replica is finite (no NaN or Inf).

    Each replica counts its tensors holding a NaN or Inf and the counts are summed over
    all replicas (``ReplicaContext.all_reduce``), so every replica gets the same answer
    and takes the same branch of a ``tf.cond`` on it, even when only one replica's
    gradient overflowed. ``tf.IndexedSlices`` are checked by their values; None entries
    are ignored. Outside a replica context with several replicas no collective is made.

    Args:
        tensors: tensors, ``tf.IndexedSlices`` or None (e.g. a step's gradients).

    Example:
        >>> bool(all_replicas_finite([tf.constant([1.0, 2.0]), None]))
        True
        >>> bool(all_replicas_finite([tf.constant([1.0, float("nan")])]))
        False
    """
    checks = [tf.reduce_all(tf.math.is_finite(t.values if isinstance(t, tf.IndexedSlices)
                                              else t)) for t in tensors if t is not None]
    bad = tf.reduce_sum(tf.cast(tf.logical_not(tf.stack(checks)), tf.float32)) if checks \
        else tf.constant(0.0)
    ctx = _replica_context()
    if ctx is not None:
        bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, bad)
    return tf.equal(bad, 0.0)


def any_worker(flag: bool, strategy: tf.distribute.Strategy | None = None) -> bool:
    """True when ``flag`` is true in at least one worker process; every worker gets the
    same answer.

    Under a multi-worker ``MultiWorkerMirroredStrategy`` this is a collective (a SUM
    all-reduce of the flags over all replicas): every worker must call it at the same
    point, the same number of times (e.g. at every step end, as
    ``malign.training.restore_points.RestorePoints`` does to agree on the step at which to
    stop after a SIGTERM reached some of them). In one process it is ``flag`` itself.

    Args:
        flag: this process's flag.
        strategy: the strategy (default: the current one).

    Example:
        >>> any_worker(False)
        False
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not _is_multi_worker(strategy):
        return bool(flag)
    value = 1.0 if flag else 0.0
    flags = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(value))
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None)) > 0


def _is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


def logs_for_keras_reduce(logs: dict) -> dict:
    """Makes a train/test step's scalar logs reducible by Keras under multi-worker.

    Keras 3.15 reduces step outputs under MultiWorkerMirroredStrategy with
    ``strategy.reduce("MEAN", value, axis=0)``, which fails on the scalar metric
    results every step returns. As 1-element vectors they reduce to the mean over
    replicas, which is what Keras does for the other strategies. Elsewhere the logs
    pass through unchanged.
    """
    if not _is_multi_worker(tf.distribute.get_strategy()):
        return logs
    return {k: tf.reshape(v, [1]) if getattr(v, "shape", None) is not None
            and v.shape.rank == 0 else v for k, v in logs.items()}
