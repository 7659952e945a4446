"""Tensor: every op's forward against NumPy and backward against finite differences,
under each kernel variant, then the behaviour of the graph itself (reuse, accumulation,
freeing, no_grad, deep graphs)."""
import gc
import operator
import weakref

import numpy as np
import pytest

import mocrograd as mg
from mocrograd import GradcheckError, Matrix, Tensor, gradcheck, no_grad
from mocrograd import train
from mocrograd.tensor import gradient_bound, gradient_factors


# ----------------------------------------------------------------------------- op table
def np_log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def case(name, fn, shapes, ref=None, domain="nonzero"):
    """One op to check: fn on Tensors, ref on float64 arrays (fn itself when it works on both).

    domain "nonzero": entries +-[0.5, 1.5] (away from relu's kink and from dividing by 0);
    "positive": [0.5, 2] (for log and fractional powers)."""
    return pytest.param(fn, ref or fn, shapes, domain, id=name)


BROADCAST_PAIRS = [((3, 4), (3, 4)), ((3, 4), (3, 1)), ((3, 4), (1, 4)), ((3, 4), (1, 1)),
                   ((3, 1), (3, 4)), ((1, 4), (3, 4)), ((1, 1), (3, 4)),
                   ((3, 1), (1, 4)), ((1, 4), (3, 1))]
BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}
NUMBERS = {"x+2": lambda x: x + 2, "2+x": lambda x: 2 + x, "x-0.5": lambda x: x - 0.5,
           "0.5-x": lambda x: 0.5 - x, "x*3": lambda x: x * 3, "-1.5*x": lambda x: -1.5 * x,
           "x/4": lambda x: x / 4, "4/x": lambda x: 4 / x}

OPS = (
    [case(f"{op}-{a[0]}x{a[1]}-{b[0]}x{b[1]}", fn, [a, b]) for op, fn in BINARY.items() for a, b in BROADCAST_PAIRS]
    + [case(name, fn, [(3, 4)]) for name, fn in NUMBERS.items()]
    + [case(f"pow{p}", lambda x, p=p: x ** p, [(3, 4)]) for p in (2, 3, 1, 0, -1)]
    + [case(f"pow{p}", lambda x, p=p: x ** p, [(3, 4)], domain="positive") for p in (0.5, -2.5, 1.7)]
    + [case("matmul", operator.matmul, [(3, 4), (4, 2)]),
       case("matmul-row-col", operator.matmul, [(1, 4), (4, 1)]),
       case("matmul-col-row", operator.matmul, [(3, 1), (1, 5)]),
       case("neg", operator.neg, [(3, 4)]),
       case("relu", Tensor.relu, [(3, 4)], lambda x: np.maximum(x, 0)),
       case("exp", Tensor.exp, [(3, 4)], np.exp),
       case("log", Tensor.log, [(3, 4)], np.log, domain="positive")]
    + [case(f"log_softmax{axis}", lambda x, axis=axis: x.log_softmax(axis), [(3, 4)],
            lambda x, axis=axis: np_log_softmax(x, axis)) for axis in (0, 1)]
    + [case(f"{name}-axis{axis}", lambda x, name=name, axis=axis: getattr(x, name)(axis), [(3, 4)],
            lambda x, name=name, axis=axis: getattr(np, name)(x, axis=axis, keepdims=True))
       for name in ("sum", "mean") for axis in (None, 0, 1)]
    + [case("linear-relu-log_softmax", lambda w, x, b: (w @ x + b).relu().log_softmax(0), [(3, 4), (4, 5), (3, 1)],
            lambda w, x, b: np_log_softmax(np.maximum(w @ x + b, 0), 0)),
       case("squared-error-mean", lambda a, b: ((a - b) ** 2).mean(), [(3, 4), (3, 4)],
            lambda a, b: np.mean((a - b) ** 2, keepdims=True)),
       case("reused-node", lambda a: a * a + a / (a * a - 3), [(3, 4)])]
    + [case("sum_squares", Tensor.sum_squares, [(3, 4)], lambda x: np.sum(x * x, keepdims=True)),
       case("sum_squares-of-non-leaf", lambda x: (x * 2).sum_squares(), [(3, 4)],
            lambda x: np.sum(4 * x * x, keepdims=True))]
    # the fused Linear node: W and b leaves (W's gradient added in place), W a computed tensor,
    # W shared by two layers, W also in a sum_squares penalty
    + [case(f"linear{'-relu' * relu}", lambda w, x, b, relu=relu: mg.linear(x, w, b, relu), [(3, 4), (4, 5), (3, 1)],
            lambda w, x, b, relu=relu: np.maximum(w @ x + b, 0) if relu else w @ x + b) for relu in (False, True)]
    + [case("linear-computed-weight", lambda w, x, b: mg.linear(x, w * 2, b), [(3, 4), (4, 5), (3, 1)],
            lambda w, x, b: 2 * w @ x + b),
       case("linear-shared-weight", lambda w, x, b: mg.linear(mg.linear(x, w, b, relu=True), w, b),
            [(4, 4), (4, 5), (4, 1)], lambda w, x, b: w @ np.maximum(w @ x + b, 0) + b),
       case("linear-plus-penalty", lambda w, x, b: mg.linear(x, w, b).sum() + w.sum_squares() * 0.5,
            [(3, 4), (4, 5), (3, 1)], lambda w, x, b: np.sum(w @ x + b, keepdims=True) + 0.5 * np.sum(w * w))]
)


def make_inputs(shapes, domain, seed=0):
    rng = np.random.default_rng(seed)
    if domain == "positive":
        return [rng.uniform(0.5, 2.0, shape) for shape in shapes]
    return [rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 1.5, shape) for shape in shapes]


def gradients(fn, inputs, dtype):
    """d sum(fn(inputs) * W) / d inputs, W fixed, computed in dtype."""
    leaves = [Tensor(x, requires_grad=True, dtype=dtype) for x in inputs]
    out = fn(*leaves)
    weights = np.linspace(0.5, 1.5, out.shape[0] * out.shape[1]).reshape(out.shape)
    (out * Tensor(weights, dtype=dtype)).sum().backward()
    return [leaf.grad.numpy() for leaf in leaves]


@pytest.mark.parametrize("fn, ref, shapes, domain", OPS)
def test_float64_matches_numpy_and_finite_differences(fn, ref, shapes, domain, each_backend):
    inputs = make_inputs(shapes, domain)
    out = fn(*[Tensor(x, dtype=np.float64) for x in inputs])
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.numpy(), ref(*inputs), rtol=1e-12, atol=1e-12)
    assert gradcheck(fn, inputs)


@pytest.mark.parametrize("fn, ref, shapes, domain", OPS)
def test_float32_matches_float64(fn, ref, shapes, domain, each_backend):
    inputs = make_inputs(shapes, domain)
    out = fn(*[Tensor(x, dtype=np.float32) for x in inputs])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), ref(*inputs), rtol=1e-5, atol=1e-5)
    for g32, g64 in zip(gradients(fn, inputs, np.float32), gradients(fn, inputs, np.float64)):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5)


def test_gradcheck_catches_a_wrong_backward():
    def double_with_wrong_gradient(x):  # forward 2x, backward claims d/dx = 1
        return Tensor._result(x.data * 2.0, "bad", (x,), lambda g: (g,))

    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(double_with_wrong_gradient, [np.ones((2, 2))])


# ------------------------------------------------------------------- hand-computed cases
def test_matmul_by_hand(each_backend):
    a = Tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    b = Tensor([[5.0, 6.0], [7.0, 8.0]], requires_grad=True)
    c = a @ b
    c.sum().backward()
    np.testing.assert_array_equal(c.numpy(), [[19, 22], [43, 50]])
    np.testing.assert_array_equal(a.grad.numpy(), [[11, 15], [11, 15]])  # ones @ b.T
    np.testing.assert_array_equal(b.grad.numpy(), [[4, 4], [6, 6]])      # a.T @ ones


def test_add_by_hand(each_backend):
    a = Tensor([[1.0, 2.0]], requires_grad=True)
    b = Tensor([[3.0, 4.0]], requires_grad=True)
    c = a + b
    c.sum().backward()
    np.testing.assert_array_equal(c.numpy(), [[4, 6]])
    np.testing.assert_array_equal(a.grad.numpy(), [[1, 1]])
    np.testing.assert_array_equal(b.grad.numpy(), [[1, 1]])


def test_add_number_by_hand(each_backend):
    a = Tensor([[1.0, -2.0]], requires_grad=True)
    c = a + 5
    c.sum().backward()
    np.testing.assert_array_equal(c.numpy(), [[6, 3]])
    np.testing.assert_array_equal(a.grad.numpy(), [[1, 1]])


def test_broadcast_bias_gradient_sums_over_the_batch(each_backend):
    x = Tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], requires_grad=True)
    bias = Tensor([[10.0], [20.0]], requires_grad=True)
    (x + bias).sum().backward()
    np.testing.assert_array_equal(bias.grad.numpy(), [[3], [3]])


def test_sum_by_hand(each_backend):
    a = Tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    s = a.sum()
    s.backward()
    assert s.item() == 10.0
    np.testing.assert_array_equal(a.grad.numpy(), np.ones((2, 2)))


def test_relu_gradient_at_zero_is_zero(each_backend):
    x = Tensor([[-1.0, 0.0, 2.0]], requires_grad=True)
    y = x.relu()
    y.sum().backward()
    np.testing.assert_array_equal(y.numpy(), [[0, 0, 2]])
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0, 1]])


def test_pow_zero_has_zero_gradient_even_at_zero():
    x = Tensor([[0.0, 2.0]], requires_grad=True)
    (x ** 0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0]])


def test_log_softmax_by_hand(each_backend):
    x = Tensor([[1.0], [2.0], [3.0]], requires_grad=True, dtype=np.float64)
    y = x.log_softmax(axis=0)
    y.sum().backward()
    softmax = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    np.testing.assert_allclose(y.numpy()[:, 0], np.log(softmax), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy()[:, 0], 1 - 3 * softmax, rtol=1e-12)  # g - softmax * sum(g)


def test_log_softmax_survives_huge_logits(each_backend):
    y = Tensor([[1000.0, -1000.0], [0.0, -1001.0]]).log_softmax(axis=0)
    np.testing.assert_allclose(y.numpy(), [[0, -np.log1p(np.exp(-1))], [-1000, -1 - np.log1p(np.exp(-1))]],
                               rtol=1e-6)


def test_cross_entropy_by_hand(each_backend):
    logits = Tensor(np.zeros((3, 2)), requires_grad=True)  # uniform over 3 classes, 2 examples
    loss = mg.nn.cross_entropy(logits, np.array([0, 2]))
    loss.backward()
    assert loss.item() == pytest.approx(np.log(3), rel=1e-6)
    onehot = np.array([[1, 0], [0, 0], [0, 1]])
    np.testing.assert_allclose(logits.grad.numpy(), (1 / 3 - onehot) / 2, rtol=1e-6)  # (softmax - onehot) / batch


# ------------------------------------------------------------------------ the graph
def test_reused_node_gets_the_sum_of_its_gradients():
    a = Tensor([[3.0]], requires_grad=True)
    b = a + a
    c = b + b
    c.backward()
    assert a.grad.item() == 4.0


def test_reused_node_in_products():
    a = Tensor([[3.0]], requires_grad=True)
    b = a * a
    (b * b).backward()  # a ** 4
    assert a.grad.item() == 4 * 3.0 ** 3


def test_gradients_accumulate_across_backward_calls_until_zero_grad():
    x = Tensor([[1.0, 2.0]], requires_grad=True)
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[6, 6]])
    x.zero_grad()
    assert x.grad is None
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[2, 4]])


def test_fused_linear_gradients_accumulate_across_backward_calls():
    w = Tensor([[1.0, 2.0]], requires_grad=True)
    b = Tensor([[0.5]], requires_grad=True)
    x = Tensor([[3.0], [4.0]])
    for _ in range(2):
        mg.linear(x, w, b).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [[6, 8]])
    np.testing.assert_array_equal(b.grad.numpy(), [[2]])
    assert x.grad is None


def reused_weight_graph(w, b, other, x):
    """A loss in which w reaches the output three ways: a fused linear layer (whose
    rule writes w's gradient buffer directly), sum_squares (the same) and a product
    (whose gradient arrives through the graph); ``other`` is a leaf it never uses."""
    return (mg.linear(x, w, b, relu=True).sum() + w.sum_squares() * 0.5 + (w * w).sum()) * 2


@pytest.mark.parametrize("stale", [False, True], ids=["first-pass", "stale-gradients"])
def test_backward_without_accumulate_replaces_gradients_in_their_buffers(stale, each_backend):
    rng = np.random.default_rng(3)
    w, b, other = (Tensor(rng.standard_normal(s), requires_grad=True, dtype=np.float64)
                   for s in ((3, 4), (3, 1), (2, 2)))
    x = Tensor(rng.standard_normal((4, 5)), dtype=np.float64)
    if stale:   # garbage in every buffer, as a previous step leaves it
        for t in (w, b, other):
            t.grad = Tensor(rng.standard_normal(t.shape) * 1e3, dtype=np.float64)
    buffers = {name: t.grad.data if t.grad is not None else None for name, t in zip("wbo", (w, b, other))}
    before_other = None if other.grad is None else other.grad.numpy().copy()
    reused_weight_graph(w, b, other, x).backward(accumulate=False)

    w2, b2 = (Tensor(t.numpy().copy(), requires_grad=True, dtype=np.float64) for t in (w, b))
    reused_weight_graph(w2, b2, None, x).backward()     # the oracle: fresh zero gradients
    np.testing.assert_allclose(w.grad.numpy(), w2.grad.numpy(), rtol=1e-13)
    np.testing.assert_allclose(b.grad.numpy(), b2.grad.numpy(), rtol=1e-13)
    if stale:   # the same buffers were written over; a leaf the pass never reached kept its gradient
        assert w.grad.data is buffers["w"] and b.grad.data is buffers["b"]
        np.testing.assert_array_equal(other.grad.numpy(), before_other)
    else:
        assert other.grad is None

    reused_weight_graph(w, b, other, x).backward()      # the default still accumulates
    np.testing.assert_allclose(w.grad.numpy(), 2 * w2.grad.numpy(), rtol=1e-13)


def test_a_failed_backward_without_accumulate_leaves_later_passes_accumulating():
    x = Tensor([[1.0, 2.0]], requires_grad=True)
    y = (x * 3).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="already freed"):
        y.backward(accumulate=False)
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[6, 6]])


# A bound on a weight gradient lets a training loop skip its finiteness scan (fit does).
def wide_layer(rng, dtype):
    """A Linear layer whose weight gradient (37 x 53) is bigger than its G and X together."""
    w = Tensor(rng.standard_normal((37, 53)), requires_grad=True, dtype=dtype)
    b = Tensor(rng.standard_normal((37, 1)), requires_grad=True, dtype=dtype)
    x = Tensor(rng.standard_normal((53, 5)) * 3, dtype=dtype)
    return w, b, x


def test_a_linear_weight_gradient_is_within_its_bound(dtype, each_backend):
    rng = np.random.default_rng(5)
    w, b, x = wide_layer(rng, dtype)
    out = mg.linear(x, w, b, relu=True)
    g = 7.0 * (out.numpy() > 0)                                  # the gradient of 7 * sum(relu(...))
    (out.sum() * 7).backward(accumulate=False)
    one = gradient_bound(w)
    assert one == pytest.approx(np.linalg.norm(g) * np.linalg.norm(x.numpy()), rel=1e-5)   # ||G|| ||X||
    assert np.abs(w.grad.numpy()).max() <= one

    x2 = Tensor(rng.standard_normal((53, 5)), dtype=dtype)     # w used twice: the bounds add
    (mg.linear(x, w, b, relu=True).sum() * 7 + mg.linear(x2, w, b).sum()).backward(accumulate=False)
    two = gradient_bound(w)
    assert two > one and np.abs(w.grad.numpy()).max() <= two
    assert gradient_bound(b) is None                            # the bias's arrives through the graph


def test_no_bound_without_a_proof_for_the_whole_gradient():
    rng = np.random.default_rng(6)
    w, b, x = wide_layer(rng, np.float64)
    mg.linear(x, w, b).sum().backward()             # added to the old gradient: its values are unknown
    assert gradient_bound(w) is None
    reused_weight_graph(w, b, None, x).backward(accumulate=False)   # other rules write w's gradient too
    assert gradient_bound(w) is None
    (w.sum_squares() + mg.linear(x, w, b).sum()).backward(accumulate=False)   # in either order
    assert gradient_bound(w) is None
    (mg.linear(x, w, b).sum() + w.sum_squares()).backward(accumulate=False)
    assert gradient_bound(w) is None
    mg.linear(x, w, b).sum().backward(accumulate=False)
    assert gradient_bound(w) is not None
    other = Tensor([[1.0]], requires_grad=True)
    (other * 2).sum().backward()                    # a later pass that never reaches w
    assert gradient_bound(w) is None
    small = Tensor([[1.0, 2.0]], requires_grad=True)   # a gradient no bigger than G and X: scanned instead
    mg.linear(Tensor([[3.0], [4.0]]), small, Tensor([[0.5]], requires_grad=True)).sum().backward(accumulate=False)
    assert gradient_bound(small) is None


@pytest.mark.parametrize("poison", ["infinite input", "overflow"])
def test_a_non_finite_weight_gradient_is_never_proved_finite(poison, each_backend):
    rng = np.random.default_rng(7)
    w, b, x = wide_layer(rng, np.float32)
    seed = np.ones((37, 5), dtype=np.float32)
    if poison == "infinite input":
        x.numpy()[3, 2] = np.inf
    else:   # finite G and X whose product overflows float32: 1e10 * 1e30 * 5 terms
        x.numpy()[:] = 1e30
        seed[:] = 1e10
    mg.linear(x, w, b).backward(gradient=seed, accumulate=False)
    assert not np.isfinite(w.grad.numpy()).all()
    assert not train._proved_finite(w)
    assert train._first_non_finite([w], ["w"], "gradient") == "the gradient of w is not finite"


def test_the_finiteness_check_scans_only_unproved_gradients(monkeypatch):
    rng = np.random.default_rng(8)
    w, b, x = wide_layer(rng, np.float32)
    mg.linear(x, w, b).sum().backward(accumulate=False)
    scanned = []
    monkeypatch.setattr(train, "_finite", lambda matrix: scanned.append(matrix) or True)
    assert train._first_non_finite([w, b], ["w", "b"], "gradient") is None
    assert len(scanned) == 1 and scanned[0] is b.grad.data


def twin(tensors):
    """Fresh leaves with the same values (and requires_grad) as tensors."""
    return [Tensor(t.numpy().copy(), requires_grad=t.requires_grad, dtype=t.dtype) for t in tensors]


def test_factored_backward_leaves_a_weight_gradient_as_g_and_x(each_backend):
    rng = np.random.default_rng(9)
    w, b, x = wide_layer(rng, np.float64)
    x.requires_grad = True
    w2, b2, x2 = twin((w, b, x))
    (mg.linear(x, w, b, relu=True).sum() * 3).backward(accumulate=False, factored=True)
    assert w.grad is None and gradient_bound(w) is not None      # proved finite, so left factored
    (mg.linear(x2, w2, b2, relu=True).sum() * 3).backward()      # the oracle: formed gradients
    g, xm = gradient_factors(w)
    np.testing.assert_allclose(g.numpy() @ xm.numpy().T, w2.grad.numpy(), rtol=1e-13)
    np.testing.assert_allclose(b.grad.numpy(), b2.grad.numpy(), rtol=1e-13)
    np.testing.assert_allclose(x.grad.numpy(), x2.grad.numpy(), rtol=1e-13)
    w.zero_grad()                                                # forgets the factors too
    assert gradient_factors(w) is None


def test_factored_backward_forms_what_it_cannot_factor():
    rng = np.random.default_rng(10)
    w, b, x = wide_layer(rng, np.float64)
    x2 = Tensor(rng.standard_normal((53, 5)), dtype=np.float64)
    twice = lambda w, b: mg.linear(x, w, b).sum() + mg.linear(x2, w, b).sum()
    twice(w, b).backward(accumulate=False, factored=True)         # w used twice: one rule cannot own it
    w_ref, b_ref = twin((w, b))
    twice(w_ref, b_ref).backward()
    assert gradient_factors(w) is None
    np.testing.assert_allclose(w.grad.numpy(), w_ref.grad.numpy(), rtol=1e-13)

    mg.linear(x, w, b).sum().backward(accumulate=False, factored=True)
    mg.linear(x, w_ref, b_ref).sum().backward(accumulate=False)
    mg.linear(x2, Tensor(w.numpy()), b).sum().backward()         # a later pass that does not reach w
    assert gradient_factors(w) is not None                        # ... leaves its gradient factored
    mg.linear(x2, w, b).sum().backward()                          # one that adds to it forms it first
    mg.linear(x2, w_ref, b_ref).sum().backward()
    assert gradient_factors(w) is None
    np.testing.assert_allclose(w.grad.numpy(), w_ref.grad.numpy(), rtol=1e-13)

    x.numpy()[0, 0] = np.inf                                      # no proof of finiteness: formed (and scanned)
    mg.linear(x, w, b).sum().backward(accumulate=False, factored=True)
    assert gradient_factors(w) is None and not np.isfinite(w.grad.numpy()).all()
    with pytest.raises(ValueError, match=r"factored=True\) needs accumulate=False"):
        mg.linear(x, w, b).sum().backward(factored=True)


def test_fused_linear_takes_a_matrix_batch_of_the_same_dtype():
    w, b = Tensor([[1.0, 2.0]], requires_grad=True), Tensor([[0.5]], requires_grad=True)
    np.testing.assert_array_equal(mg.linear(Matrix([[3.0], [4.0]]), w, b).numpy(), [[11.5]])
    with pytest.raises(TypeError, match="different dtypes"):
        mg.linear(Tensor([[3.0], [4.0]], dtype=np.float64), w, b)


def test_only_leaves_keep_a_gradient():
    x = Tensor([[1.0, 2.0]], requires_grad=True)
    hidden = x * 2
    hidden.sum().backward()
    assert hidden.grad is None
    assert x.grad is not None


def test_inputs_without_requires_grad_get_no_gradient():
    x = Tensor([[1.0, 2.0]], requires_grad=True)
    constant = Tensor([[5.0, 6.0]])
    (x * constant).sum().backward()
    assert constant.grad is None
    np.testing.assert_array_equal(x.grad.numpy(), [[5, 6]])


def test_backward_needs_a_1x1_tensor_or_a_gradient():
    y = Tensor([[1.0, 2.0]], requires_grad=True) * 2
    with pytest.raises(ValueError, match="1x1"):
        y.backward()
    with pytest.raises(ValueError, match="gradient has shape"):
        y.backward(gradient=np.ones((2, 1)))


def test_backward_with_an_explicit_gradient():
    x = Tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    (x * 3).backward(gradient=[[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(x.grad.numpy(), [[3, 6], [9, 12]])


def test_backward_on_a_constant_raises():
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        (Tensor([[1.0]]) * 2).backward()


def test_second_backward_through_a_freed_graph_raises():
    x = Tensor([[1.0]], requires_grad=True)
    y = (x * 2).exp()
    y.backward()
    with pytest.raises(RuntimeError, match="already freed"):
        y.backward()


def test_graph_is_freed_after_backward():
    x = Tensor(np.ones((4, 4)), requires_grad=True)
    hidden = x.exp()
    alive = weakref.ref(hidden)
    loss = (hidden * 2).sum()
    del hidden
    gc.collect()
    assert alive() is not None  # kept by the graph until backward
    loss.backward()
    gc.collect()
    assert alive() is None


def test_no_grad_records_nothing():
    x = Tensor([[1.0, 2.0]], requires_grad=True)
    with no_grad():
        y = (x * 2).exp()
        assert not mg.is_grad_enabled()
    assert mg.is_grad_enabled()
    assert not y.requires_grad
    assert y._prev == ()
    assert (x * 2).requires_grad  # recording resumes after the block


def test_no_grad_as_a_decorator_and_when_reentered():
    guard = no_grad()

    @guard
    def depth(n):
        assert not mg.is_grad_enabled()
        return Tensor([[1.0]], requires_grad=True) * 2 if n == 0 else depth(n - 1)

    assert not depth(3).requires_grad
    assert mg.is_grad_enabled()
    with guard:
        with guard:
            pass
        assert not mg.is_grad_enabled()
    assert mg.is_grad_enabled()


def test_no_grad_restores_after_an_exception():
    with pytest.raises(KeyError):
        with no_grad():
            raise KeyError
    assert mg.is_grad_enabled()


def test_100000_node_chain_backward_without_recursion_error():
    x = Tensor([[2.0]], requires_grad=True)
    y = x
    for _ in range(99_999):
        y = -y
    y.backward()
    assert y.item() == -2.0
    assert x.grad.item() == -1.0


def test_30_layer_network_backward():
    mg.manual_seed(0)
    model = mg.nn.Longer(layers=30)
    loss = mg.nn.nll_loss(model(Tensor(np.random.default_rng(0).random((64, 4), dtype=np.float32))),
                          np.array([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert len(grads) == 60 and all(g is not None for g in grads)
    assert np.isfinite(grads[0].numpy()).all()


# ------------------------------------------------------------------ construction, misc
@pytest.mark.parametrize("data, shape", [(3.5, (1, 1)), ([[1, 2, 3]], (1, 3)), (np.zeros((2, 5)), (2, 5)),
                                         (Matrix.zeros(4, 1), (4, 1))])
def test_construction(data, shape):
    t = Tensor(data)
    assert t.shape == shape
    assert not t.requires_grad and t.grad is None


def test_default_dtype_is_float32_unless_given():
    assert Tensor([[1.0]]).dtype == np.float32
    assert Tensor([[1.0]], dtype=np.float64).dtype == np.float64


def test_tensor_shares_a_matrix_and_detach_shares_data():
    m = Matrix.zeros(2, 2)
    t = Tensor(m, requires_grad=True)
    assert t.data is m
    d = (t * 1).detach()
    assert not d.requires_grad and d._prev == ()


def test_item():
    assert Tensor(2.5).item() == 2.5
    with pytest.raises(ValueError, match="1x1"):
        Tensor([[1.0, 2.0]]).item()


def test_repr_shows_values_and_op():
    x = Tensor([[1.0, 2.0]], requires_grad=True)
    assert "requires_grad=True" in repr(x)
    assert "op='add'" in repr(x + 1)
    assert "2." in repr(x)


def test_mixed_dtypes_raise():
    with pytest.raises(TypeError, match="different dtypes"):
        Tensor([[1.0]], dtype=np.float32) + Tensor([[1.0]], dtype=np.float64)


def test_pow_needs_a_number():
    with pytest.raises(TypeError, match="number exponent"):
        Tensor([[1.0]]) ** Tensor([[2.0]])


def test_numpy_array_on_the_left_gives_a_tensor():
    x = Tensor([[1.0, 2.0]], requires_grad=True)
    y = np.array([[10.0, 20.0]], dtype=np.float32) * x
    assert isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[10, 20]])


def test_matrix_on_the_left_gives_a_tensor():
    x = Tensor([[1.0, 2.0]], requires_grad=True)
    w = Matrix([[3.0], [4.0]])
    for y in (w @ x, Matrix([[10.0, 20.0]]) * x, Matrix([[1.0]]) + x, Matrix([[1.0]]) - x, Matrix([[2.0]]) / x):
        assert isinstance(y, Tensor)
    (w @ x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[7, 7]])
