"""Distillation losses against numpy float64 references (forward and gradient), and
cpu:4 replicas against one device on the global batch."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from numerics import numeric_grad as central_difference

from malign import distributed, losses

GLOBAL_BATCH = 8
REPLICAS = 4


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def numpy_kl(student_logits, teacher_logits, d):
    """D² * mean over rows of KL(softmax(teacher/D) || softmax(student/D))."""
    log_p = _log_softmax(teacher_logits / d)
    log_q = _log_softmax(student_logits / d)
    return d * d * (np.exp(log_p) * (log_p - log_q)).sum(-1).mean()


def numpy_similarity_kl(si, st, ti, tt, s_temp, t_temp, d):
    i2t = numpy_kl(si @ st.T / s_temp, ti @ tt.T / t_temp, d)
    t2i = numpy_kl(st @ si.T / s_temp, tt @ ti.T / t_temp, d)
    return 0.5 * (i2t + t2i)


def numpy_alignment(s, t, kind, w=None):
    if w is not None:
        s = s @ w
    if kind == "cosine":
        return (1.0 - (_normalize(s) * _normalize(t)).sum(-1)).mean()
    return ((s - t) ** 2).sum(-1).mean()


def numeric_grad(f, x):
    return central_difference(f, x, eps=1e-6)


@pytest.fixture
def towers():
    """Student (width 4) and teacher (width 6) image/text embeddings of 8 examples; the
    teacher is a noisy version of a random map of the student, as after some training."""
    rng = np.random.default_rng(0)
    si = _normalize(rng.normal(size=(GLOBAL_BATCH, 4)))
    st = _normalize(si + 0.7 * rng.normal(size=si.shape))
    lift = rng.normal(size=(4, 6))
    ti = _normalize(si @ lift + 0.5 * rng.normal(size=(GLOBAL_BATCH, 6)))
    tt = _normalize(st @ lift + 0.5 * rng.normal(size=(GLOBAL_BATCH, 6)))
    return si, st, ti, tt


def _f32(*arrays):
    return [tf.constant(a, tf.float32) for a in arrays]


# ----------------------------------------------------------------- distillation_loss


@pytest.mark.parametrize("d", [1.0, 0.5, 4.0])
def test_distillation_loss_forward_and_gradient(d):
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(5, 7)), 3 * rng.normal(size=(5, 7))
    s_v, t_v = tf.Variable(s), tf.Variable(t)
    with tf.GradientTape() as tape:
        loss = losses.distillation_loss(s_v, t_v, d)
    g_s, g_t = tape.gradient(loss, [s_v, t_v])
    np.testing.assert_allclose(float(loss), numpy_kl(s, t, d), rtol=1e-5)
    # Analytic: d/ds of D² KL = D (softmax(s/D) - softmax(t/D)) / rows.
    want = d * (np.exp(_log_softmax(s / d)) - np.exp(_log_softmax(t / d))) / len(s)
    np.testing.assert_allclose(g_s.numpy(), want, atol=1e-6)
    assert g_t is None  # the teacher is under stop_gradient


def test_distillation_loss_is_zero_for_equal_logits_and_shift_invariant():
    z = np.random.default_rng(2).normal(size=(4, 6))
    assert abs(float(losses.distillation_loss(*_f32(z, z), 2.0))) < 1e-6
    # A per-row constant shift leaves a softmax unchanged.
    assert abs(float(losses.distillation_loss(*_f32(z + 5.0, z), 0.3))) < 1e-5


def test_distillation_loss_shape_errors():
    with pytest.raises(ValueError, match=r"student_logits \(3, 4\) and teacher_logits \(3, 5\)"):
        losses.distillation_loss(tf.zeros((3, 4)), tf.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"teacher_logits must be a \[batch, width\] matrix"):
        losses.distillation_loss(tf.zeros((3, 4)), tf.zeros((3, 4, 1)))


# ---------------------------------------------------------------- similarity_kl_loss


@pytest.mark.parametrize("s_temp,t_temp,d", [
    (1.0, None, 1.0), (0.05, 0.1, 1.0), (0.1, 0.02, 2.0), (0.5, 0.5, 0.5)])
def test_similarity_kl_forward_matches_numpy(towers, s_temp, t_temp, d):
    got = losses.similarity_kl_loss(*_f32(*towers), s_temp, t_temp, distill_temperature=d)
    want = numpy_similarity_kl(*towers, s_temp, s_temp if t_temp is None else t_temp, d)
    assert want > 1e-3  # the towers disagree: a real, non-trivial value is compared
    np.testing.assert_allclose(float(got), want, rtol=2e-5)


@pytest.mark.parametrize("d", [1.0, 3.0])
def test_similarity_kl_gradient_matches_numpy(towers, d):
    """Gradient w.r.t. the student's image and text embeddings and temperature, by
    central differences of the float64 reference; none reaches the teacher."""
    si, st, ti, tt = towers
    s_temp, t_temp = 0.2, 0.1
    si_v, st_v, ti_v, tt_v = (tf.Variable(a) for a in towers)
    temp_v, t_temp_v = tf.Variable(s_temp, dtype=tf.float64), tf.Variable(t_temp, tf.float64)
    with tf.GradientTape() as tape:
        loss = losses.similarity_kl_loss(si_v, st_v, ti_v, tt_v, temp_v, t_temp_v, d)
    g_si, g_st, g_ti, g_tt, g_temp, g_t_temp = tape.gradient(
        loss, [si_v, st_v, ti_v, tt_v, temp_v, t_temp_v])
    want_si = numeric_grad(lambda x: numpy_similarity_kl(x, st, ti, tt, s_temp, t_temp, d), si)
    want_st = numeric_grad(lambda x: numpy_similarity_kl(si, x, ti, tt, s_temp, t_temp, d), st)
    want_temp = numeric_grad(
        lambda x: numpy_similarity_kl(si, st, ti, tt, float(x), t_temp, d), s_temp)
    # Computed in float32 whatever comes in; the tolerance reflects that.
    np.testing.assert_allclose(g_si.numpy(), want_si, atol=2e-5)
    np.testing.assert_allclose(g_st.numpy(), want_st, atol=2e-5)
    np.testing.assert_allclose(float(g_temp), float(want_temp), rtol=1e-4, atol=2e-5)
    assert np.abs(want_si).max() > 1e-2  # a gradient that matters is compared
    assert g_ti is None and g_tt is None and g_t_temp is None


def test_similarity_kl_teacher_temperature_none_means_student_temperature(towers):
    si, st, ti, tt = _f32(*towers)
    temp = tf.Variable(0.3)
    with tf.GradientTape(persistent=True) as tape:
        default = losses.similarity_kl_loss(si, st, ti, tt, temp)
        explicit = losses.similarity_kl_loss(si, st, ti, tt, temp, tf.constant(0.3))
    np.testing.assert_allclose(float(default), float(explicit), rtol=1e-6)
    # Without gradient on the teacher side: the same gradient as a constant teacher temperature.
    np.testing.assert_allclose(float(tape.gradient(default, temp)),
                               float(tape.gradient(explicit, temp)), rtol=1e-5)


@pytest.mark.parametrize("d", [1.0, 0.25, 5.0])
def test_similarity_kl_is_zero_when_student_is_teacher(towers, d):
    si, st, _, _ = _f32(*towers)
    assert abs(float(losses.similarity_kl_loss(si, st, si, st, 0.07, None, d))) < 1e-5
    # Different widths, same similarities (an orthogonal lift 4 -> 6): also zero.
    q = np.linalg.qr(np.random.default_rng(3).normal(size=(6, 6)))[0][:4]
    ti, tt = _f32(towers[0] @ q, towers[1] @ q)
    assert abs(float(losses.similarity_kl_loss(si, st, ti, tt, 0.07, 0.07, d))) < 1e-5


def test_similarity_kl_grows_with_disagreement(towers):
    """A student matching the teacher's pairing is closer than one with shuffled texts."""
    si, st, ti, tt = towers
    close = float(losses.similarity_kl_loss(*_f32(si, st, ti, tt), 0.1, 0.1))
    shuffled = float(losses.similarity_kl_loss(*_f32(si, st[::-1].copy(), ti, tt), 0.1, 0.1))
    assert close < shuffled


def test_similarity_kl_shape_errors():
    x = tf.zeros((4, 8))
    with pytest.raises(ValueError, match=r"student_image width 8 != student_text width 6"):
        losses.similarity_kl_loss(x, tf.zeros((4, 6)), x, x, 1.0)
    with pytest.raises(ValueError, match=r"teacher_image width 8 != teacher_text width 5"):
        losses.similarity_kl_loss(x, x, x, tf.zeros((4, 5)), 1.0)
    with pytest.raises(ValueError, match=r"batch sizes differ: .*teacher_text \(3, 8\)"):
        losses.similarity_kl_loss(x, x, x, tf.zeros((3, 8)), 1.0)
    with pytest.raises(ValueError, match=r"student_text must be a \[batch, width\] matrix"):
        losses.similarity_kl_loss(x, tf.zeros((8,)), x, x, 1.0)


# ---------------------------------------------------------- embedding_alignment_loss


@pytest.mark.parametrize("kind", ["cosine", "mse"])
@pytest.mark.parametrize("with_projection", [False, True])
def test_alignment_forward_and_gradient_match_numpy(towers, kind, with_projection):
    si, _, ti, _ = towers
    rng = np.random.default_rng(4)
    s = 1.5 * rng.normal(size=(GLOBAL_BATCH, 4))  # not unit rows: mse compares as given
    w = rng.normal(size=(4, 6)) if with_projection else None
    t = ti if with_projection else si
    s_v, t_v = tf.Variable(s), tf.Variable(t)
    w_v = tf.Variable(w) if with_projection else None
    with tf.GradientTape() as tape:
        loss = losses.embedding_alignment_loss(s_v, t_v, kind=kind, projection=w_v)
    sources = [s_v, t_v] + ([w_v] if with_projection else [])
    grads = tape.gradient(loss, sources)
    np.testing.assert_allclose(float(loss), numpy_alignment(s, t, kind, w), rtol=1e-5)
    want_s = numeric_grad(lambda x: numpy_alignment(x, t, kind, w), s)
    np.testing.assert_allclose(grads[0].numpy(), want_s, rtol=1e-4, atol=2e-5)
    assert grads[1] is None  # the teacher is under stop_gradient
    if with_projection:
        want_w = numeric_grad(lambda x: numpy_alignment(s, t, kind, x), w)
        np.testing.assert_allclose(grads[2].numpy(), want_w, rtol=1e-4, atol=2e-5)


def test_alignment_known_values():
    s = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = tf.constant([[2.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    # cosine: 1 - 1, 1 + 1, 1 - 1/sqrt(2)
    np.testing.assert_allclose(float(losses.embedding_alignment_loss(s, t)),
                               (0 + 2 + 1 - 2 ** -0.5) / 3, rtol=1e-6)
    # mse: 1, 4, 1
    np.testing.assert_allclose(float(losses.embedding_alignment_loss(s, t, "mse")), 2.0,
                               rtol=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_alignment_is_zero_when_student_is_teacher(towers, kind):
    si, _, ti, _ = towers
    assert abs(float(losses.embedding_alignment_loss(*_f32(si, si), kind=kind))) < 1e-6
    # Through a projection that maps the student exactly onto the teacher.
    w = np.linalg.lstsq(si, ti, rcond=None)[0]
    target = si @ w
    got = losses.embedding_alignment_loss(*_f32(si, target), kind=kind,
                                          projection=tf.constant(w, tf.float32))
    assert abs(float(got)) < 1e-5


def test_alignment_mse_on_unit_rows_is_twice_cosine(towers):
    si, st, _, _ = _f32(*towers)
    np.testing.assert_allclose(float(losses.embedding_alignment_loss(si, st, "mse")),
                               2 * float(losses.embedding_alignment_loss(si, st, "cosine")),
                               rtol=1e-5)


def test_alignment_errors_name_what_is_wrong():
    s, t = tf.zeros((4, 8)), tf.zeros((4, 16))
    with pytest.raises(ValueError, match=r"student width 8 != teacher width 16.*\[8, 16\]"):
        losses.embedding_alignment_loss(s, t)
    with pytest.raises(ValueError, match=r"projection has shape \(16, 8\).*\[8, 16\]"):
        losses.embedding_alignment_loss(s, t, projection=tf.zeros((16, 8)))
    with pytest.raises(ValueError, match=r"kind='l1'.*cosine, mse"):
        losses.embedding_alignment_loss(s, s, kind="l1")
    with pytest.raises(ValueError, match=r"batch sizes differ: student_emb \(4, 8\), "
                                         r"teacher_emb \(5, 8\)"):
        losses.embedding_alignment_loss(s, tf.zeros((5, 8)))
    with pytest.raises(ValueError, match=r"teacher_emb must be a \[batch, width\] matrix"):
        losses.embedding_alignment_loss(s, tf.zeros((4, 2, 8)))


def test_alignment_accepts_numpy_and_float64():
    s = np.eye(3, 4)
    assert float(losses.embedding_alignment_loss(s, s.astype("float32"), "mse")) == 0.0


# --------------------------------------------------- cross_lingual_distillation_loss


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_cross_lingual_is_alignment_of_translation_to_english(towers, kind):
    """Student embeddings of translations pulled to the teacher's English embeddings."""
    si, st, ti, _ = towers
    w = np.random.default_rng(5).normal(size=(4, 6))
    de = tf.Variable(st)
    with tf.GradientTape() as tape:
        loss = losses.cross_lingual_distillation_loss(de, tf.constant(ti), kind=kind,
                                                      projection=tf.constant(w))
    np.testing.assert_allclose(float(loss), numpy_alignment(st, ti, kind, w), rtol=1e-5)
    np.testing.assert_allclose(
        tape.gradient(loss, de).numpy(),
        numeric_grad(lambda x: numpy_alignment(x, ti, kind, w), st), rtol=1e-4, atol=2e-5)
    with pytest.raises(ValueError, match="student width 4 != teacher width 6"):
        losses.cross_lingual_distillation_loss(st, ti)


# ------------------------------------------------- cpu:4 replicas == one device


@pytest.fixture(scope="module")
def cpu4():
    return distributed.get_strategy(f"cpu:{REPLICAS}")


def _per_replica(strategy, *arrays):
    """Each array split row-wise over the replicas (replica k gets block k)."""
    local = GLOBAL_BATCH // strategy.num_replicas_in_sync

    def split(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group * local:
                                          (ctx.replica_id_in_sync_group + 1) * local],
                                    tf.float32))

    return [split(a) for a in arrays]


def _run_distributed(strategy, loss_fn, students, teachers, scalar):
    """Per replica: the loss and the gradients of the compute_loss-scaled loss w.r.t. the
    local student rows and a shared scalar/matrix parameter. Returns the mean of the
    replica losses, the student gradients concatenated in replica order, and the
    parameter gradient summed over replicas (what Keras' all-reduce does)."""
    inputs = _per_replica(strategy, *students, *teachers)
    n_students = len(students)

    @tf.function
    def run(*inputs):
        def step(*inputs):
            student, teacher = list(inputs[:n_students]), list(inputs[n_students:])
            param = tf.identity(tf.constant(scalar, tf.float32))
            with tf.GradientTape() as tape:
                tape.watch(student)
                tape.watch(param)
                loss = loss_fn(student, teacher, param)
                scaled = distributed.scale_loss_for_replicas(loss)
            grads = tape.gradient(scaled, student + [param])
            return loss, grads[:-1], grads[-1]

        loss, student_grads, param_grad = strategy.run(step, args=inputs)
        mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None)
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, param_grad, axis=None)
        return mean, student_grads, total

    mean, student_grads, total = run(*inputs)
    rows = [np.concatenate([v.numpy() for v in strategy.experimental_local_results(g)])
            for g in student_grads]
    return float(mean), rows, total.numpy()


def _run_single(loss_fn, students, teachers, scalar):
    student = [tf.constant(a, tf.float32) for a in students]
    teacher = [tf.constant(a, tf.float32) for a in teachers]
    param = tf.constant(scalar, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(student)
        tape.watch(param)
        loss = loss_fn(student, teacher, param)
    grads = tape.gradient(loss, student + [param])
    return float(loss), [g.numpy() for g in grads[:-1]], grads[-1].numpy()


def _assert_replicas_equal_one_device(cpu4, loss_fn, students, teachers, scalar):
    assert cpu4.num_replicas_in_sync == REPLICAS
    loss1, grads1, param1 = _run_single(loss_fn, students, teachers, scalar)
    loss4, grads4, param4 = _run_distributed(cpu4, loss_fn, students, teachers, scalar)
    assert abs(loss4 - loss1) <= 1e-5, (loss4, loss1)
    for g4, g1 in zip(grads4, grads1):
        assert g4.shape == g1.shape == (GLOBAL_BATCH, students[0].shape[1])
        np.testing.assert_allclose(g4, g1, atol=1e-5)
    np.testing.assert_allclose(param4, param1, atol=1e-5)
    return loss1, grads1


@pytest.mark.parametrize("d", [1.0, 2.0])
def test_similarity_kl_cpu4_equals_one_device_on_global_batch(cpu4, towers, d):
    """The KL over the gathered global batch: mean of the replica losses and the summed
    gradients of the scaled losses (student rows and student temperature) equal one
    device's on all 8 rows."""
    si, st, ti, tt = towers

    def loss_fn(student, teacher, temperature):
        return losses.similarity_kl_loss(*student, *teacher, temperature, 0.1, d)

    loss, _ = _assert_replicas_equal_one_device(cpu4, loss_fn, [si, st], [ti, tt], 0.2)
    np.testing.assert_allclose(loss, numpy_similarity_kl(si, st, ti, tt, 0.2, 0.1, d),
                               rtol=2e-5)


def test_similarity_kl_cpu4_differs_from_local_only_kl(cpu4, towers):
    """Guards the gather: the KL over each replica's 2 rows alone is another number."""
    si, st, ti, tt = towers
    local = np.mean([numpy_similarity_kl(si[k:k + 2], st[k:k + 2], ti[k:k + 2], tt[k:k + 2],
                                         0.2, 0.1, 1.0) for k in range(0, GLOBAL_BATCH, 2)])
    loss4, _, _ = _run_distributed(
        cpu4, lambda s, t, p: losses.similarity_kl_loss(*s, *t, p, 0.1), [si, st], [ti, tt], 0.2)
    assert abs(loss4 - local) > 1e-2


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_alignment_cpu4_equals_one_device_on_global_batch(cpu4, towers, kind):
    si, _, ti, _ = towers
    w = np.random.default_rng(6).normal(size=(4, 6)).astype("float32")

    def loss_fn(student, teacher, scale):
        return losses.embedding_alignment_loss(student[0], teacher[0], kind=kind,
                                               projection=scale * w)

    _assert_replicas_equal_one_device(cpu4, loss_fn, [si], [ti], 0.5)
