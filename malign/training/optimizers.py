"""LAMB and AdamW with decoupled weight decay, and their faster updates on CPU.

On CPU, variables of ``FUSED_MIN_SIZE`` elements or more (token embeddings) are updated by
one fused XLA program; AdamW's other variables by TensorFlow's ``ResourceApplyAdam`` kernel;
the weight decay of both computes the learning rate once a step. Every path computes
Keras' expressions (tests/test_training.py compares them with Keras' update).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from malign import distributed
from malign.config import TrainingConfig
from malign.training import fault_injection
from malign.training.schedules import make_schedule

# Parameters matched by these names get no weight decay: biases, norm scales and
# offsets, and the temperature / logit bias.
NO_DECAY_NAMES = ("bias", "gamma", "beta", "temperature")

# Variables with at least this many elements get the fused update on CPU (see
# _FusedLargeVariableUpdates): the 250k-row token embeddings of the multilingual presets.
FUSED_MIN_SIZE = 1 << 20


def _local_variable(variable):
    """The plain tf.Variable behind a Keras variable, on this device inside an update."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    if hasattr(variable, "_get_on_device_or_primary"):  # a tf.distribute variable
        variable = variable._get_on_device_or_primary()
    return variable


def combine_duplicate_rows(gradient):
    """An IndexedSlices gradient with each row once, holding the sum of its slices.

    Rows repeat in the gradient of a gather (a token used twice in a batch, or by
    several replicas: their slices are concatenated, not summed). The row's gradient is
    the sum. Keras' Adam and LAMB densify ``g`` for the first moment, but square the
    IndexedSlices *values* before densifying for the second (``ops.square`` maps over the
    values), which would put ``sum(g_i ** 2)`` in ``v`` instead of ``(sum g_i) ** 2``:
    frequent tokens ([CLS], [SEP], common words) would get too small a second moment and
    too large a step. Combining rows first makes the update equal to the dense-gradient
    one. Dense gradients pass through.

    Example:
        >>> g = tf.IndexedSlices(tf.constant([[1.0], [2.0], [3.0]]), tf.constant([4, 1, 4]))
        >>> c = combine_duplicate_rows(g)
        >>> c.indices.numpy().tolist(), c.values.numpy().ravel().tolist()
        ([4, 1], [4.0, 2.0])
    """
    if not isinstance(gradient, tf.IndexedSlices):
        return gradient
    rows, position = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
    return tf.IndexedSlices(values, rows, gradient.dense_shape)


def _unique_rows(gradient: tf.IndexedSlices):
    """Rows of a gather gradient: (rows [N], sums [N, C], squared sums [N, C]), N = len(indices).

    A repeated row's gradient is the sum of its slices (``combine_duplicate_rows``), and
    its second-moment term the square of that sum, as for a dense gradient. The sums are
    taken in order of occurrence with ``unsorted_segment_sum`` as TensorFlow densifies.
    The shape stays static: slots beyond the number of distinct rows repeat the first
    row and its sums (a scatter of equal values to one row is deterministic).
    """
    n = tf.shape(gradient.indices)[0]
    combined = combine_duplicate_rows(gradient)
    slot = tf.range(n)
    slot = tf.where(slot < tf.shape(combined.indices)[0], slot, 0)
    sums = tf.gather(combined.values, slot)
    return tf.gather(tf.cast(combined.indices, tf.int32), slot), sums, tf.square(sums)


def _row_moments(m_var, v_var, rows, sums, squares, one_minus_beta_1, one_minus_beta_2):
    """Keras' moment expressions on the rows a gradient touches (small, plain TensorFlow)."""
    m_rows = tf.gather(m_var, rows)
    v_rows = tf.gather(v_var, rows)
    return (m_rows + (sums - m_rows) * one_minus_beta_1,
            v_rows + (squares - v_rows) * one_minus_beta_2)


def _fused_moments(m_var, v_var, rows, m_rows, v_rows, g_dense, one_minus_beta_1,
                   one_minus_beta_2):
    """Keras' moment updates ``m + (g - m) * (1 - beta_1)``, ``v + (g^2 - v) * (1 - beta_2)``, in place.

    With a dense gradient this is the Keras expression. With a row gradient, rows it does
    not touch have g = 0, so they get ``m + (-m) * (1 - beta_1)`` (bit-identical to
    ``m + (0 - m) * (1 - beta_1)``), and the touched rows are then overwritten with their
    values from ``_row_moments``: Keras' dense result, without a dense gradient.
    """
    m = m_var.read_value()
    v = v_var.read_value()
    if g_dense is not None:
        m_var.assign(m + (g_dense - m) * one_minus_beta_1)
        v_var.assign(v + (tf.square(g_dense) - v) * one_minus_beta_2)
        return
    m_var.assign(m + (-m) * one_minus_beta_1)
    v_var.assign(v + (-v) * one_minus_beta_2)
    m_var.scatter_update(tf.IndexedSlices(m_rows, rows))
    v_var.scatter_update(tf.IndexedSlices(v_rows, rows))


def _decayed(w, lr, decay):
    return w - w * decay * lr


def _lamb_direction(m, v, beta_1_power, beta_2_power, epsilon):
    return (m / (1.0 - beta_1_power)) / (tf.sqrt(v / (1.0 - beta_2_power)) + epsilon)


# Block size (elements) of the norms below.
_NORM_BLOCK = 1 << 22


def _sum_of_squares(fn, rows: int, row_size: int):
    """Sum of ``fn(start, stop) ** 2`` over row blocks of a variable, inside XLA.

    XLA on CPU materialises an elementwise producer of a reduction over a whole
    512 MB variable (a fresh, page-faulted temporary per step); over blocks of 16 MB the
    temporaries are small and reused. The sum order differs from one reduction's only in
    float32 rounding.
    """
    block = max(1, _NORM_BLOCK // max(row_size, 1))
    total = 0.0
    for start in range(0, rows, block):
        total += tf.reduce_sum(tf.square(fn(start, min(start + block, rows))))
    return total


def _fused_lamb_apply(variable, m_var, v_var, lr, decay, beta_1_power, beta_2_power, epsilon):
    """LAMB's trust ratio ||decayed w|| / ||update|| and step with weight decay, in place."""
    w, m, v = (tf.reshape(x.read_value(), [x.shape[0], -1]) if x.shape.rank else
               tf.reshape(x.read_value(), [1, 1]) for x in (variable, m_var, v_var))
    rows, row_size = w.shape
    w_norm = tf.sqrt(_sum_of_squares(
        lambda a, b: _decayed(w[a:b], lr, decay), rows, row_size))
    g_norm = tf.sqrt(_sum_of_squares(
        lambda a, b: _lamb_direction(m[a:b], v[a:b], beta_1_power, beta_2_power, epsilon),
        rows, row_size))
    ratio = tf.where(w_norm > 0, tf.where(g_norm > 0, w_norm / g_norm, 1.0), 1.0)
    update = _lamb_direction(m_var.read_value(), v_var.read_value(), beta_1_power,
                             beta_2_power, epsilon)
    variable.assign(_decayed(variable.read_value(), lr, decay) - ratio * lr * update)


def _fused_adam_apply(variable, m_var, v_var, lr, decay, alpha, epsilon):
    """Adam's step with decoupled weight decay, in place."""
    m = m_var.read_value()
    v = v_var.read_value()
    variable.assign(_decayed(variable.read_value(), lr, decay)
                    - (m * alpha) / (tf.sqrt(v) + epsilon))


class _FusedLargeVariableUpdates:
    """Runs the optimizer update of large variables on CPU as one fused XLA program.

    Keras' optimizers update a variable with a chain of TensorFlow ops, each of which
    allocates a new array the size of the variable: about ten for LAMB plus weight decay,
    and the densified gradient first. For a 250,000 x 512 token embedding (512 MB) each
    fresh allocation is page-faulted in, so the update of that one variable took most of
    a student train step on a 2-core CPU. The fused program computes the same
    expressions (weight decay, both moments over *all* rows, bias correction, the LAMB
    trust ratio) in a few passes and in place, and never densifies a row gradient.
    It is not a sparse ("lazy") Adam: the moments of rows that got no gradient still
    decay, as in Keras. Results equal Keras' update on the dense gradient to float32
    rounding. Both paths combine the repeated rows of a gather gradient first
    (``combine_duplicate_rows``), so ``v`` gets the squared row gradient, as it would
    from the dense gradient, not Keras' sum of squared slices.

    Used on CPU for variables with at least ``fused_min_size`` elements; everything else
    (and every variable on GPU/TPU, where the whole step is XLA-compiled) takes the Keras
    path.
    """

    def __init__(self, *args, fused_min_size: int = FUSED_MIN_SIZE, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused_min_size = int(fused_min_size)

    def get_config(self) -> dict:
        config = super().get_config()
        config["fused_min_size"] = self.fused_min_size
        return config

    def _fuses(self, variable) -> bool:
        if self._plain_path():
            return False
        size = 1
        for dim in variable.shape:
            size *= int(dim)
        return size >= self.fused_min_size and distributed.device_type() == "CPU"

    def _apply_weight_decay(self, variables):
        """Decoupled weight decay ``w -= w * (learning_rate * weight_decay)``, in place.

        Fused variables are decayed inside their fused update (same expression). Keras'
        own version evaluates the learning-rate schedule and makes four full-size passes
        for each variable; here the rate is computed once, and each variable takes one
        multiply and one in-place subtraction.
        """
        variables = [v for v in variables
                     if not self._fuses(v) and self._use_weight_decay(v)]
        if self.weight_decay is None or not variables:
            return
        rate = tf.cast(self.learning_rate, "float32") * tf.cast(self.weight_decay, "float32")

        def decay(distribution, variables, rate):
            def decay_one(variable, rate):
                variable.assign_sub(variable * tf.cast(rate, variable.dtype))

            for variable in variables:
                if isinstance(variable, keras.Variable):
                    variable = variable.value
                distribution.extended.update(variable, decay_one, args=(rate,), group=False)

        # The rate goes through merge_call as an argument (not a closure), so that under
        # a Mirrored strategy each device's update gets its own copy, as Keras passes the
        # learning rate to its update step.
        tf.__internal__.distribute.interim.maybe_merge_call(
            decay, self._distribution_strategy, variables, rate)

    def _update_moments(self, gradient, variable) -> dict:
        """Updates m and v of ``variable`` in place; returns the tensors the step needs."""
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        m_var = _local_variable(self._momentums[index])
        v_var = _local_variable(self._velocities[index])
        one_minus_beta_1 = tf.constant(1 - self.beta_1, dtype)
        one_minus_beta_2 = tf.constant(1 - self.beta_2, dtype)
        gradient = tf.cast(gradient, dtype)
        moments = self._compiled(_fused_moments)
        if isinstance(gradient, tf.IndexedSlices):
            rows, sums, squares = _unique_rows(gradient)
            m_rows, v_rows = _row_moments(m_var, v_var, rows, sums, squares, one_minus_beta_1,
                                          one_minus_beta_2)
            moments(m_var, v_var, rows, m_rows, v_rows, None, one_minus_beta_1, one_minus_beta_2)
        else:
            moments(m_var, v_var, None, None, None, gradient, one_minus_beta_1, one_minus_beta_2)
        decay = 0.0
        if self.weight_decay is not None and self._use_weight_decay(variable):
            decay = self.weight_decay
        return dict(variable=_local_variable(variable), m_var=m_var, v_var=v_var,
                    decay=tf.cast(decay, dtype), epsilon=tf.constant(self.epsilon, dtype))

    def _compiled(self, fn):
        """``fn`` as this optimizer's own XLA-compiled ``tf.function``.

        One per optimizer, not one per module: a module-level function kept the traces
        of an earlier optimizer's variables, and after a run under a multi-replica
        strategy the next optimizer's call in the same process failed ("a function
        referencing variables which have been deleted"; tests/test_distributed.py).
        """
        cache = self.__dict__.setdefault("_compiled_fns", {})
        if fn not in cache:
            cache[fn] = tf.function(fn, jit_compile=True, autograph=False)
        return cache[fn]

    def _applies_kernel(self, gradient, variable) -> bool:
        """Whether ``variable`` is updated by TensorFlow's optimizer kernel (subclasses)."""
        return False

    def _kernel_step(self, gradient, variable, learning_rate) -> None:
        raise NotImplementedError

    def _plain_path(self) -> bool:
        """Keras' update throughout: turned off, or a Keras feature the fused paths lack."""
        return (self.fused_min_size <= 0 or getattr(self, "amsgrad", False)
                or bool(self.gradient_accumulation_steps) or bool(self.use_ema))

    def update_step(self, gradient, variable, learning_rate):
        if self._applies_kernel(gradient, variable):
            return self._kernel_step(gradient, variable, learning_rate)
        if not self._fuses(variable):
            return super().update_step(combine_duplicate_rows(gradient), variable, learning_rate)
        beta_1_power, beta_2_power = self._bias_corrections(variable)
        lr = tf.cast(learning_rate, variable.dtype)
        state = self._update_moments(gradient, variable)
        self._fused_step(lr, beta_1_power, beta_2_power, state)

    def _fused_step(self, lr, beta_1_power, beta_2_power, state) -> None:
        """The optimizer's own step from the updated moments (``state``), in place."""
        raise NotImplementedError

    def _bias_corrections(self, variable):
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        return (tf.pow(tf.cast(self.beta_1, dtype), local_step),
                tf.pow(tf.cast(self.beta_2, dtype), local_step))


class _SkipNonFiniteUpdates:
    """Skips an update whose gradients hold a NaN or Inf, and counts it.

    Before the update, every replica checks its gradients and the replicas agree
    (``malign.distributed.all_replicas_finite``, one scalar all-reduce), so all of them
    skip or all apply. A skipped update changes no weight, moment or weight decay; the step
    counter (``iterations``, which the learning-rate schedule and the data position
    follow) still advances, and ``nonfinite_updates`` (an int64 optimizer variable, saved
    with the optimizer) counts it. ``malign.training.restore_points.RestorePoints`` reads
    the count: it stops the run (``training.nonfinite="stop"``) or reports it ("skip").

    The branch follows Keras' ``LossScaleOptimizer``: under strategies that synchronise
    with ``merge_call`` (Mirrored) the ``tf.cond`` runs in the cross-replica context,
    because a cond in a replica context may not contain the optimizer's ``merge_call``.
    """

    def build(self, variables):
        super().build(variables)
        if getattr(self, "nonfinite_updates", None) is None:
            self.nonfinite_updates = self.add_variable(
                shape=(), initializer="zeros", dtype="int64",
                aggregation="only_first_replica", name="nonfinite_updates")

    def _skip_update(self):
        self._iterations.assign_add(1)
        self.nonfinite_updates.assign_add(1)
        return tf.constant(False)

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if not grads:
            return
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
            if not self.built:
                with keras.name_scope(self.name, caller=self):
                    self.build(trainable_variables)
                self.built = True
        parent = super().apply

        def apply_update(grads, trainable_variables):
            parent(grads, trainable_variables)
            return tf.constant(True)

        grads = fault_injection.nan_gradients(grads, self.iterations + 1)  # tests only
        finite = distributed.all_replicas_finite(grads)
        if (tf.distribute.in_cross_replica_context()
                or not tf.distribute.has_strategy()
                or tf.__internal__.distribute.strategy_supports_no_merge_call()):
            tf.cond(finite, lambda: apply_update(grads, trainable_variables), self._skip_update)
            return

        def cross_replica(distribution, finite, grads, trainable_variables):
            # Every replica computed the same value (all_replicas_finite all-reduces).
            agreed = distribution.experimental_local_results(finite)[0]

            def update():
                distribution.extended.call_for_each_replica(
                    apply_update, args=(grads, trainable_variables))
                return tf.constant(True)
            tf.cond(agreed, update, self._skip_update)

        tf.distribute.get_replica_context().merge_call(
            cross_replica, args=(finite, grads, trainable_variables))


@keras.saving.register_keras_serializable(package="malign")
class FusedLamb(_SkipNonFiniteUpdates, _FusedLargeVariableUpdates, keras.optimizers.Lamb):
    """``keras.optimizers.Lamb`` whose large variables are updated by one fused program on CPU.

    Args:
        fused_min_size: variables with at least this many elements take the fused update
            (on CPU); 0 turns it off.
        **kwargs: ``keras.optimizers.Lamb`` arguments.

    Example:
        >>> FusedLamb(learning_rate=1e-3, weight_decay=1e-5).fused_min_size
        1048576
    """

    def _fused_step(self, lr, beta_1_power, beta_2_power, state) -> None:
        self._compiled(_fused_lamb_apply)(lr=lr, beta_1_power=beta_1_power,
                                          beta_2_power=beta_2_power, **state)


@keras.saving.register_keras_serializable(package="malign")
class FusedAdamW(_SkipNonFiniteUpdates, _FusedLargeVariableUpdates, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` whose large variables are updated by one fused program on CPU,
    and its other dense variables by TensorFlow's ``ResourceApplyAdam`` kernel (one pass).

    An update of ``student-b0-bert-mini`` (282 variables, 15 M weights) takes 74 ms on
    2 CPU cores against 147 ms for ``keras.optimizers.AdamW``
    (``benchmarks/bench_optimizer.py``, ``benchmarks/RESULTS.md``).

    Args:
        fused_min_size: variables with at least this many elements take the fused update
            (on CPU); 0 turns it off.
        **kwargs: ``keras.optimizers.AdamW`` arguments.

    Example:
        >>> FusedAdamW(learning_rate=1e-3, weight_decay=1e-5).fused_min_size
        1048576
    """

    def _fused_step(self, lr, beta_1_power, beta_2_power, state) -> None:
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        self._compiled(_fused_adam_apply)(lr=lr, alpha=alpha, **state)

    def _applies_kernel(self, gradient, variable) -> bool:
        # On CPU every dense gradient below the fused size; GPU/TPU steps are XLA-compiled
        # and fuse Keras' expressions themselves.
        return (not self._plain_path() and not self._fuses(variable)
                and not isinstance(gradient, tf.IndexedSlices)
                and distributed.device_type() == "CPU")

    def _kernel_step(self, gradient, variable, learning_rate) -> None:
        """Adam's step as TensorFlow's ``ResourceApplyAdam`` kernel, in place.

        The kernel computes Keras' expressions (``m += (g - m) * (1 - beta_1)``,
        ``v += (g**2 - v) * (1 - beta_2)``, ``w -= m * alpha / (sqrt(v) + epsilon)`` with
        ``alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``) in one pass over the
        variable, where Keras' update makes about ten ops that each read or write all of
        it. The weight decay was applied before (``_apply_weight_decay``), as in Keras.
        """
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        beta_1_power, beta_2_power = self._bias_corrections(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=_local_variable(variable).handle,
            m=_local_variable(self._momentums[index]).handle,
            v=_local_variable(self._velocities[index]).handle,
            beta1_power=beta_1_power, beta2_power=beta_2_power,
            lr=tf.cast(learning_rate, dtype), beta1=tf.constant(self.beta_1, dtype),
            beta2=tf.constant(self.beta_2, dtype), epsilon=tf.constant(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype), use_locking=False)


def make_optimizer(cfg: TrainingConfig, fused_min_size: int = FUSED_MIN_SIZE
                   ) -> keras.optimizers.Optimizer:
    """LAMB or AdamW with the schedule, decoupled weight decay (not on norms/biases).

    On CPU, variables with at least ``fused_min_size`` elements (the token embedding
    of a 250k vocabulary) are updated by one fused XLA program with the same result as
    Keras' update (see ``FusedLamb``). Under ``mixed_float16`` the optimizer is wrapped
    in a ``LossScaleOptimizer``.

    Args:
        cfg: the training config.
        fused_min_size: size threshold of the fused update (0 = Keras' update throughout).

    Example:
        >>> opt = make_optimizer(TrainingConfig(optimizer="adamw", steps=10, warmup_steps=1))
        >>> type(opt).__name__
        'FusedAdamW'
    """
    common = dict(
        learning_rate=make_schedule(cfg),
        beta_1=cfg.beta_1,
        beta_2=cfg.beta_2,
        epsilon=cfg.epsilon,
        # AdamW needs a float (0.0 = none); LAMB takes None for none.
        weight_decay=cfg.weight_decay if cfg.optimizer == "adamw" else (cfg.weight_decay or None),
        clipnorm=None,
        global_clipnorm=cfg.clipnorm or None,
        fused_min_size=fused_min_size,
    )
    if cfg.optimizer == "lamb":
        optimizer = FusedLamb(**common)
    else:
        optimizer = FusedAdamW(**common)
    if cfg.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    if cfg.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


