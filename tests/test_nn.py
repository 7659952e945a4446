"""nn: layers and models, losses, optimizers against NumPy references, and training that
gives the same losses under every kernel variant."""
import numpy as np
import pytest

import mocrograd as mg
from mocrograd import Matrix, Tensor, gradcheck, nn
from mocrograd.data import DataLoader, load_digits
from mocrograd.nn import optim
from mocrograd.tensor import gradient_factors
from mocrograd.train import l2_groups, make_optimizer


def np_log_softmax(x, axis=0):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def param_count(sizes):
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


# ------------------------------------------------------------------------------ layers
def test_linear_shapes_and_forward():
    layer = nn.Linear(5, 3)
    assert layer.weight.shape == (3, 5) and layer.bias.shape == (3, 1)
    assert layer.weight.dtype == np.float32 and layer.weight.requires_grad
    np.testing.assert_array_equal(layer.bias.numpy(), np.zeros((3, 1)))
    layer.bias.numpy()[:] = [[1.0], [2.0], [3.0]]
    x = np.random.default_rng(0).random((5, 7), dtype=np.float32)  # 7 examples as columns
    out = layer(Tensor(x))
    assert out.shape == (3, 7)
    np.testing.assert_allclose(out.numpy(), layer.weight.numpy() @ x + layer.bias.numpy(), rtol=1e-5)


def test_linear_float64():
    layer = nn.Linear(2, 2, dtype=np.float64)
    assert layer.weight.dtype == np.float64 and layer.bias.dtype == np.float64


@pytest.mark.parametrize("init, std", [("kaiming", np.sqrt(2 / 2000)), ("normal", 0.01)])
def test_linear_init_statistics(init, std):
    mg.manual_seed(0)
    weights = nn.Linear(2000, 500, init=init).weight.numpy()
    assert weights.std() == pytest.approx(std, rel=0.02)
    assert abs(weights.mean()) < 0.01 * std


@pytest.mark.parametrize("args, kwargs", [((0, 3), {}), ((3, 0), {}), ((3, 3), {"init": "xavier"})])
def test_linear_rejects_bad_arguments(args, kwargs):
    with pytest.raises(ValueError):
        nn.Linear(*args, **kwargs)


def test_manual_seed_makes_initialization_reproducible():
    mg.manual_seed(7)
    first = nn.Normal().state_dict()
    mg.manual_seed(7)
    again = nn.Normal().state_dict()
    mg.manual_seed(8)
    other = nn.Normal().state_dict()
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["layers.0.weight"], other["layers.0.weight"])


# ------------------------------------------------------------------------------ models
def test_mlp_forward_matches_numpy():
    model = nn.MLP([4, 8, 3])
    x = np.random.default_rng(1).random((4, 5), dtype=np.float32)
    (w1, b1), (w2, b2) = [(layer.weight.numpy(), layer.bias.numpy()) for layer in model.layers]
    expected = np_log_softmax(w2 @ np.maximum(w1 @ x + b1, 0) + b2)
    out = model(Tensor(x))
    assert out.shape == (3, 5)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, sizes", [("normal", [64, 64, 32, 10]),
                                         ("longer", [64] + [256] * 29 + [10])])
def test_model_structure(name, sizes):
    model = nn.build_model(name)
    assert [(layer.in_features, layer.out_features) for layer in model.layers] == list(zip(sizes, sizes[1:]))
    assert sum(p.shape[0] * p.shape[1] for p in model.parameters()) == param_count(sizes)


def test_longer_has_30_linear_layers_and_a_layers_argument():
    assert len(nn.Longer().layers) == 30
    assert len(nn.Longer(layers=5).layers) == 5
    with pytest.raises(ValueError):
        nn.Longer(layers=1)


def test_bigger_structure_and_one_tiny_batch():
    model = nn.Bigger()  # ~42.5 M parameters, 0.17 GB of float32
    sizes = [64, 8192, 4096, 2048, 10]
    assert [layer.out_features for layer in model.layers] == sizes[1:]
    assert sum(p.shape[0] * p.shape[1] for p in model.parameters()) == param_count(sizes) == 42_502_154
    out = model(Tensor(Matrix.rand(64, 2)))
    np.testing.assert_allclose(np.exp(out.numpy()).sum(axis=0), [1, 1], rtol=1e-5)


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown model"):
        nn.build_model("huge")
    with pytest.raises(ValueError):
        nn.MLP([64])


def test_named_parameters_in_definition_order():
    names = [name for name, _ in nn.Normal().named_parameters()]
    assert names == [f"layers.{i}.{kind}" for i in range(3) for kind in ("weight", "bias")]


def test_train_and_eval_set_the_flag_on_every_layer():
    model = nn.Normal()
    assert model.eval() is model
    assert not model.training and not any(layer.training for layer in model.layers)
    model.train()
    assert model.training and all(layer.training for layer in model.layers)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_module_zero_grad(set_to_none):
    model = nn.MLP([3, 2])
    nn.cross_entropy(model(Tensor(np.ones((3, 4), dtype=np.float32))), np.array([0, 1, 0, 1])).backward()
    model.zero_grad(set_to_none=set_to_none)
    for p in model.parameters():
        if set_to_none:
            assert p.grad is None
        else:
            np.testing.assert_array_equal(p.grad.numpy(), np.zeros(p.shape))


# -------------------------------------------------------------------------- state_dict
def test_state_dict_round_trip():
    mg.manual_seed(1)
    source = nn.Normal()
    mg.manual_seed(2)
    target = nn.Normal()
    state = source.state_dict()
    target.load_state_dict(state)
    x = Tensor(Matrix.rand(64, 3))
    np.testing.assert_array_equal(target(x).numpy(), source(x).numpy())
    state["layers.0.weight"][:] = 0  # the state is a copy
    assert source.layers[0].weight.numpy().any()


def test_state_dict_keeps_frozen_tensors():
    """A tensor with requires_grad=False is still the module's state (as a frozen
    parameter in PyTorch's state_dict): saved, and restored by load_state_dict."""
    mg.manual_seed(1)
    source = nn.Normal()
    source.layers[0].weight.requires_grad = False
    mg.manual_seed(2)
    target = nn.Normal()
    target.layers[0].weight.requires_grad = False
    assert "layers.0.weight" in source.state_dict()
    assert "layers.0.weight" not in dict(source.named_parameters())
    target.load_state_dict(source.state_dict())
    np.testing.assert_array_equal(target.layers[0].weight.numpy(), source.layers[0].weight.numpy())


def test_a_shared_layer_is_one_parameter():
    """A layer reached under two names is named once (its first name), as in PyTorch, so an
    optimizer takes its parameters once and training moves them once per step."""
    class Tied(nn.Module):
        def __init__(self):
            self.a = nn.Linear(4, 4)
            self.b = self.a

        def forward(self, x):
            return self.b(self.a(x))

    model = Tied()
    assert [name for name, _ in model.named_parameters()] == ["a.weight", "a.bias"]
    assert list(model.state_dict()) == ["a.weight", "a.bias"]
    nn.SGD(model.parameters(), lr=0.1)   # no "in more than one group" error


def test_load_state_dict_converts_float64_values():
    model = nn.MLP([2, 2])
    model.load_state_dict({"layers.0.weight": np.eye(2), "layers.0.bias": np.ones((2, 1))})
    assert model.layers[0].weight.dtype == np.float32
    np.testing.assert_array_equal(model.layers[0].weight.numpy(), np.eye(2))


def test_load_state_dict_not_strict_loads_a_subset():
    model = nn.MLP([2, 2])
    model.load_state_dict({"layers.0.bias": np.ones((2, 1))}, strict=False)
    np.testing.assert_array_equal(model.layers[0].bias.numpy(), np.ones((2, 1)))


def _missing(state):
    del state["layers.2.bias"]


def _unexpected(state):
    state["layers.3.weight"] = np.zeros((10, 10))


def _wrong_shape(state):
    state["layers.2.bias"] = np.zeros((11, 1))


def _integer_values(state):
    state["layers.2.bias"] = np.zeros((10, 1), dtype=np.int64)


@pytest.mark.parametrize("corrupt, error, message", [(_missing, KeyError, "missing"),
                                                     (_unexpected, KeyError, "unexpected"),
                                                     (_wrong_shape, ValueError, "shape"),
                                                     (_integer_values, TypeError, "dtype")])
def test_bad_state_raises_and_leaves_the_model_untouched(corrupt, error, message):
    mg.manual_seed(1)
    state = nn.Normal().state_dict()  # different values from the model's for every name
    corrupt(state)  # the bad entry is the last layer's: everything before it would load first
    mg.manual_seed(2)
    model = nn.Normal()
    before = model.state_dict()
    with pytest.raises(error, match=message):
        model.load_state_dict(state)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


# ------------------------------------------------------------------------------ losses
LABELS = np.array([0, 4, 2, 2, 1, 3, 0])


def test_nll_loss_matches_numpy(dtype):
    log_probs = np_log_softmax(np.random.default_rng(0).normal(size=(5, 7)))
    x = Tensor(log_probs, requires_grad=True, dtype=dtype)
    loss = nn.nll_loss(x, LABELS)
    loss.backward()
    picked = log_probs[LABELS, np.arange(7)]
    assert loss.item() == pytest.approx(-picked.mean(), rel=1e-6)
    expected_grad = np.zeros((5, 7))
    expected_grad[LABELS, np.arange(7)] = -1 / 7
    np.testing.assert_allclose(x.grad.numpy(), expected_grad, rtol=1e-6)


def test_cross_entropy_matches_numpy_and_finite_differences(dtype):
    logits = np.random.default_rng(1).normal(size=(5, 7)) * 3
    x = Tensor(logits, requires_grad=True, dtype=dtype)
    loss = nn.cross_entropy(x, LABELS)
    loss.backward()
    expected = -np_log_softmax(logits)[LABELS, np.arange(7)].mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    onehot = np.eye(5)[:, LABELS]
    np.testing.assert_allclose(x.grad.numpy(), (np.exp(np_log_softmax(logits)) - onehot) / 7, atol=1e-6)
    assert gradcheck(lambda t: nn.cross_entropy(t, LABELS), [logits])


@pytest.mark.parametrize("targets, error", [(np.array([0, 5]), ValueError), (np.array([-1, 0]), ValueError),
                                            (np.array([0, 1, 2]), ValueError), (np.array([0.0, 1.0]), TypeError)])
def test_nll_loss_rejects_bad_targets(targets, error):
    with pytest.raises(error):
        nn.nll_loss(Tensor(np.zeros((5, 2), dtype=np.float32)), targets)


def test_l2_penalty_reaches_the_weight_gradients_only():
    mg.manual_seed(0)
    layer = nn.Linear(4, 3)
    alpha = 0.25
    penalty = nn.l2_penalty(layer, alpha=alpha)
    weights = layer.weight.numpy().astype(np.float64)
    assert penalty.item() == pytest.approx(alpha * (weights ** 2).sum(), rel=1e-6)
    penalty.backward()
    np.testing.assert_allclose(layer.weight.grad.numpy(), 2 * alpha * weights, rtol=1e-6)
    assert layer.bias.grad is None


def test_l2_penalty_adds_to_the_data_gradient():
    mg.manual_seed(0)
    x, y = Tensor(Matrix.rand(4, 6, seed=1)), np.array([0, 1, 2, 0, 1, 2])
    model = nn.MLP([4, 3])
    nn.nll_loss(model(x), y).backward()
    data_grad = model.layers[0].weight.grad.numpy().copy()
    model.zero_grad()
    (nn.nll_loss(model(x), y) + nn.l2_penalty(model, alpha=0.1)).backward()
    np.testing.assert_allclose(model.layers[0].weight.grad.numpy(),
                               data_grad + 0.2 * model.layers[0].weight.numpy(), rtol=1e-5, atol=1e-7)


def test_l2_penalty_is_none_without_alpha_or_weights():
    layer = nn.Linear(4, 3)
    assert nn.l2_penalty(layer, alpha=0) is None
    assert nn.l2_penalty([], alpha=0.1) is None


def test_l2_penalty_of_a_module_takes_weights_by_name_not_by_shape():
    mg.manual_seed(0)
    model = nn.MLP([1, 3, 1])          # weights (3, 1) and (1, 3); biases (3, 1) and (1, 1)
    penalty = nn.l2_penalty(model, alpha=1.0)
    expected = sum(float((layer.weight.numpy().astype(np.float64) ** 2).sum()) for layer in model.layers)
    assert penalty.item() == pytest.approx(expected, rel=1e-6)
    penalty.backward()
    assert all(layer.weight.grad is not None and layer.bias.grad is None for layer in model.layers)


def test_l2_penalty_of_a_list_penalizes_every_tensor_given():
    layer = nn.Linear(2, 2)
    layer.bias = Tensor(np.full((2, 1), 3.0, dtype=np.float32), requires_grad=True)
    assert nn.l2_penalty([layer.bias], alpha=0.5).item() == pytest.approx(0.5 * 18.0)


def seeded_mlp():
    mg.manual_seed(0)
    return nn.MLP([4, 5, 3])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_fit_step_is_a_step_on_loss_plus_l2_penalty(optimizer, alpha, each_backend):
    """What fit does (weight decay 2 alpha on the weights, gradients written over
    stale ones, weight gradients left factored for the step to form) equals the
    textbook step: zero_grad, backward of loss + l2_penalty, step."""
    x, y = Tensor(Matrix.rand(4, 6, seed=1)), np.array([0, 1, 2, 0, 1, 2])
    textbook, fitted = seeded_mlp(), seeded_mlp()
    plain = make_optimizer(optimizer, textbook.parameters(), 0.1)
    grouped = make_optimizer(optimizer, l2_groups(fitted, alpha), 0.1)
    assert [g["weight_decay"] for g in grouped.param_groups] == [2 * alpha, 0.0]
    nn.nll_loss(fitted(x), y).backward()              # stale gradients that must not survive
    buffers = [p.grad.data for p in fitted.parameters()]
    for _ in range(3):
        penalty = nn.l2_penalty(textbook, alpha)
        plain.zero_grad()
        (nn.nll_loss(textbook(x), y) + (penalty if penalty is not None else 0.0)).backward()
        plain.step()
        nn.nll_loss(fitted(x), y).backward(accumulate=False, factored=True)
        grouped.step()
    for (name, a), b in zip(textbook.named_parameters(), fitted.parameters()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=2e-6, atol=1e-7, err_msg=name)
    for p, buffer in zip(fitted.parameters(), buffers):   # the biases' buffers were reused;
        assert p.grad.data is buffer if p.grad is not None else gradient_factors(p) is not None   # the weights factored


def test_accuracy():
    log_probs = np.log(np.array([[0.9, 0.1, 0.3, 0.5], [0.1, 0.9, 0.7, 0.5]]))  # 2 classes, 4 examples
    targets = np.array([0, 1, 0, 0])  # right, right, wrong, tie -> first class
    assert nn.accuracy(Tensor(log_probs), targets) == 0.75
    assert nn.accuracy(Matrix(log_probs), targets) == 0.75


# -------------------------------------------------------------------------- optimizers
GRADS = [np.random.default_rng(step).normal(size=(3, 4)) for step in range(3)]
START = np.random.default_rng(9).normal(size=(3, 4))


def run_optimizer(make, dtype=np.float64):
    """Three steps on one parameter with the fixed GRADS; returns its values after each."""
    p = Tensor(START.copy(), requires_grad=True, dtype=dtype)  # a float64 array would be shared, not copied
    optimizer = make([p])
    values = []
    for g in GRADS:
        optimizer.zero_grad()
        p.grad = Tensor(g, dtype=dtype)
        optimizer.step()
        values.append(p.numpy().copy())
    return values


def numpy_sgd(lr, momentum, weight_decay):
    p, velocity, values = START.copy(), None, []
    for g in GRADS:
        g = g + weight_decay * p
        if momentum:
            velocity = g if velocity is None else momentum * velocity + g
            g = velocity
        p = p - lr * g
        values.append(p)
    return values


def numpy_adam(lr, betas, eps, weight_decay):
    (b1, b2), p, m, v, values = betas, START.copy(), 0.0, 0.0, []
    for t, g in enumerate(GRADS, start=1):
        g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        values.append(p)
    return values


def test_sgd_step_is_p_minus_lr_g(each_backend):
    after = run_optimizer(lambda ps: nn.SGD(ps, lr=0.1))[0]
    np.testing.assert_allclose(after, START - 0.1 * GRADS[0], rtol=1e-12)


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.0, 0.1), (0.9, 0.1)])
def test_sgd_matches_numpy_over_three_steps(momentum, weight_decay, each_backend):
    got = run_optimizer(lambda ps: nn.SGD(ps, lr=0.05, momentum=momentum, weight_decay=weight_decay))
    np.testing.assert_allclose(got, numpy_sgd(0.05, momentum, weight_decay), rtol=1e-12)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_numpy_over_three_steps(weight_decay, dtype, each_backend):
    settings = dict(lr=0.01, betas=(0.8, 0.99), eps=1e-8, weight_decay=weight_decay)
    got = run_optimizer(lambda ps: nn.Adam(ps, **settings), dtype)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, numpy_adam(**settings), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("make", [lambda groups: nn.SGD(groups, lr=0.05, momentum=0.9),
                                  lambda groups: nn.Adam(groups, lr=0.01)], ids=["sgd", "adam"])
def test_parameter_groups_step_as_separate_optimizers(make, each_backend):
    """Each group's settings apply to its parameters only: one optimizer over two groups
    moves them exactly as two optimizers with those settings would."""
    rng = np.random.default_rng(1)
    start = [rng.standard_normal((3, 4)), rng.standard_normal((3, 1))]
    grads = [[rng.standard_normal(s.shape) for s in start] for _ in range(3)]
    together = [Tensor(s.copy(), requires_grad=True, dtype=np.float64) for s in start]
    apart = [Tensor(s.copy(), requires_grad=True, dtype=np.float64) for s in start]
    one = make([{"params": [together[0]], "weight_decay": 0.1, "lr": 0.02}, {"params": [together[1]]}])
    two = [make([{"params": [apart[0]], "weight_decay": 0.1, "lr": 0.02}]), make([apart[1]])]
    for step in grads:
        for t, u, g in zip(together, apart, step):
            t.grad, u.grad = Tensor(g.copy(), dtype=np.float64), Tensor(g.copy(), dtype=np.float64)
        one.step()
        for opt in two:
            opt.step()
    for t, u in zip(together, apart):
        np.testing.assert_array_equal(t.numpy(), u.numpy())
    assert one.param_groups[0]["lr"] == 0.02 and one.param_groups[1]["lr"] == one.defaults["lr"]
    assert one.params == together


def test_parameter_groups_are_checked():
    w, b = Tensor(np.ones((2, 2)), requires_grad=True), Tensor(np.ones((2, 1)), requires_grad=True)
    with pytest.raises(ValueError, match=r"group 0: unknown settings \['nesterov'\]"):
        nn.SGD([{"params": [w], "nesterov": True}], lr=0.1)
    with pytest.raises(ValueError, match="group 1: a parameter .* is in more than one group"):
        nn.SGD([{"params": [w, b]}, {"params": [w]}], lr=0.1)
    with pytest.raises(ValueError, match="group 1 has no parameters"):
        nn.SGD([{"params": [w]}, {"params": []}], lr=0.1)
    with pytest.raises(ValueError, match="momentum and weight_decay must be >= 0"):
        nn.SGD([{"params": [w], "weight_decay": -1.0}], lr=0.1)
    with pytest.raises(TypeError, match="either parameters or parameter groups"):
        nn.SGD([w, {"params": [b]}], lr=0.1)
    opt = nn.SGD([{"params": [w], "lr": 0.5}, {"params": [b]}], lr=0.1)
    with pytest.raises(ValueError, match="different learning rates"):
        opt.lr
    opt.lr = 0.2      # a schedule sets every group
    assert opt.lr == 0.2 and [g["lr"] for g in opt.param_groups] == [0.2, 0.2]


def test_optimizer_state_keeps_each_groups_settings():
    w, b = Tensor(np.ones((2, 2)), requires_grad=True), Tensor(np.ones((2, 1)), requires_grad=True)
    source = nn.SGD([{"params": [w], "weight_decay": 0.1}, {"params": [b], "lr": 0.3}], lr=0.1, momentum=0.9)
    state = source.state_dict()
    assert state["param_groups"] == [{"params": 1, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.1},
                                     {"params": 1, "lr": 0.3, "momentum": 0.9, "weight_decay": 0.0}]
    target = nn.SGD([{"params": [w]}, {"params": [b]}], lr=0.1)
    target.load_state_dict(state)
    assert [g["weight_decay"] for g in target.param_groups] == [0.1, 0.0] and target.momentum == 0.9
    regrouped = nn.SGD([w, b], lr=0.1)   # one group of two: does not fit, and nothing changes
    with pytest.raises(ValueError, match=r"param_groups: expected 1 groups, got 2"):
        regrouped.load_state_dict(state)
    assert regrouped.param_groups[0]["momentum"] == 0.0
    flat = {key: value for key, value in state.items() if key != "param_groups"}   # one group, no groups list
    with pytest.raises(ValueError, match="no param_groups"):
        target.load_state_dict(flat)
    regrouped.load_state_dict(dict(flat, velocity=[None, None]))
    assert regrouped.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("make", [lambda p: nn.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
                                  lambda p: nn.Adam(p, lr=0.01, weight_decay=0.01),
                                  lambda p: nn.SGD(p, lr=0.1, weight_decay=0.01)],
                         ids=["sgd_momentum", "adam", "sgd_one_product"])
def test_a_step_forms_a_factored_gradient_block_by_block(make, each_backend, monkeypatch):
    """The step from a factored weight gradient (backward(factored=True)) is the step from
    the formed one: 5 rows per block here, so 37 rows are 7 whole blocks and a partial one.
    SGD without momentum forms no block: its step is one product into the weight."""
    monkeypatch.setattr(optim, "ROW_BLOCK_BYTES", 5 * 53 * 8)
    rng = np.random.default_rng(11)
    w, b = (Tensor(rng.standard_normal(s), requires_grad=True, dtype=np.float64) for s in ((37, 53), (37, 1)))
    w2, b2 = (Tensor(t.numpy().copy(), requires_grad=True, dtype=np.float64) for t in (w, b))
    factored, formed = make([w, b]), make([w2, b2])
    for step in range(3):
        x = Tensor(rng.standard_normal((53, 6)), dtype=np.float64)
        mg.linear(x, w, b, relu=True).sum().backward(accumulate=False, factored=True)
        mg.linear(x, w2, b2, relu=True).sum().backward(accumulate=False)
        assert w.grad is None and gradient_factors(w) is not None
        factored.step()
        formed.step()
    np.testing.assert_allclose(w.numpy(), w2.numpy(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(b.numpy(), b2.numpy(), rtol=1e-13, atol=1e-15)
    assert not np.allclose(w.numpy(), rng.standard_normal((37, 53)))   # (it moved: not a no-op pair)
    one_product = isinstance(factored, nn.SGD) and not factored.momentum
    assert bool(factored._scratch) != one_product     # blocks were formed, or none


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["one_product", "blocks"])
def test_a_weight_whose_input_shares_its_memory_is_not_left_factored(momentum, monkeypatch):
    """x a view of W: a step from the factors would read x while writing W (the one
    product refuses the overlap, blocks read rows already updated), so the gradient is
    formed in backward and the step equals the one with a copy of x."""
    monkeypatch.setattr(optim, "ROW_BLOCK_BYTES", 4 * 30 * 8)
    rng = np.random.default_rng(12)
    start, bias = rng.standard_normal((40, 30)), rng.standard_normal((40, 1))
    results = []
    for share in (True, False):
        w, b = (Tensor(v.copy(), requires_grad=True, dtype=np.float64) for v in (start, bias))
        view = w.numpy().reshape(-1)[:60].reshape(30, 2)            # W's first 60 values, in place
        x = Tensor(view if share else view.copy(), dtype=np.float64)
        assert np.may_share_memory(x.numpy(), w.numpy()) == share
        mg.linear(x, w, b).sum().backward(accumulate=False, factored=True)
        assert (gradient_factors(w) is None) == share and (w.grad is not None) == share
        nn.SGD([w, b], lr=0.1, momentum=momentum).step()
        results.append(w.numpy().copy())
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0], start)


def test_optimizers_skip_parameters_without_a_gradient():
    p = Tensor(START.copy(), requires_grad=True, dtype=np.float64)
    for optimizer in (nn.SGD([p], lr=0.1, momentum=0.9), nn.Adam([p])):
        optimizer.step()
    np.testing.assert_array_equal(p.numpy(), START)


def test_adam_counts_steps_per_parameter():
    """A parameter whose first gradient comes at the optimizer's fourth step gets the
    first step's bias correction (as torch.optim.Adam), and steps without any gradient
    count for nobody."""
    early = Tensor(START.copy(), requires_grad=True, dtype=np.float64)
    late = Tensor(START.copy(), requires_grad=True, dtype=np.float64)
    optimizer = nn.Adam([early, late], lr=0.01, betas=(0.8, 0.99))
    optimizer.step()                       # no gradients yet: nothing moves, nothing counts
    assert optimizer.steps == [0, 0]
    for g in GRADS:
        early.grad = Tensor(g)
        optimizer.step()
    late.grad, early.grad = Tensor(GRADS[0]), None
    optimizer.step()
    assert optimizer.steps == [3, 1]
    np.testing.assert_allclose(early.numpy(), numpy_adam(0.01, (0.8, 0.99), 1e-8, 0.0)[-1], rtol=1e-12)
    np.testing.assert_allclose(late.numpy(), numpy_adam(0.01, (0.8, 0.99), 1e-8, 0.0)[0], rtol=1e-12)


def test_adam_loads_a_state_with_one_step_count():
    """A state saved before the counts were per parameter (one number) still loads: the
    parameters with buffers take that count, the others none."""
    a, b = (Tensor(START.copy(), requires_grad=True, dtype=np.float64) for _ in range(2))
    optimizer = nn.Adam([a, b])
    a.grad = Tensor(GRADS[0])
    optimizer.step()
    state = optimizer.state_dict()
    state["steps"] = 5
    optimizer.load_state_dict(state)
    assert optimizer.steps == [5, 0]


@pytest.mark.parametrize("make", [lambda ps: nn.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.5),
                                  lambda ps: nn.Adam(ps, lr=0.1, weight_decay=0.5)], ids=["sgd", "adam"])
@pytest.mark.parametrize("clear", ["optimizer", "module"])
def test_zero_grad_to_zeros_after_a_factored_backward(make, clear):
    """zero_grad(set_to_none=False) leaves zeros after backward(factored=True) as after a
    plain backward, so the next step (momentum, weight decay) moves the weight the same."""
    finals = []
    for factored in (False, True):
        mg.manual_seed(3)
        model = nn.MLP([16, 20, 2], dtype=np.float64)
        optimizer = make(model.parameters())
        x = Tensor(np.random.default_rng(4).standard_normal((16, 3)))
        nn.cross_entropy(model(x), np.array([0, 1, 1])).backward(accumulate=not factored, factored=factored)
        optimizer.step()
        (optimizer if clear == "optimizer" else model).zero_grad(set_to_none=False)
        assert all(p.grad is not None and not p.grad.numpy().any() for p in model.parameters())
        optimizer.step()
        finals.append([p.numpy().copy() for p in model.parameters()])
    for plain, factored in zip(*finals):
        np.testing.assert_allclose(factored, plain, rtol=1e-12, atol=1e-15)


def test_optimizer_zero_grad_to_zeros_keeps_the_buffer():
    p = Tensor(START, requires_grad=True)
    p.grad = Tensor(np.ones(START.shape, dtype=np.float32))
    buffer = p.grad
    nn.SGD([p], lr=0.1).zero_grad(set_to_none=False)
    assert p.grad is buffer and not p.grad.numpy().any()
    nn.SGD([p], lr=0.1).zero_grad()
    assert p.grad is None


@pytest.mark.parametrize("make", [lambda ps: nn.SGD(ps, lr=0), lambda ps: nn.SGD(ps, lr=-0.1),
                                  lambda ps: nn.SGD(ps, lr=float("nan")), lambda ps: nn.SGD([], lr=0.1),
                                  lambda ps: nn.SGD(ps, lr=0.1, momentum=-0.5), lambda ps: nn.Adam(ps, lr=0),
                                  lambda ps: nn.Adam([]), lambda ps: nn.Adam(ps, betas=(1.0, 0.999))],
                         ids=["sgd-lr0", "sgd-lr-negative", "sgd-lr-nan", "sgd-empty", "sgd-momentum-negative",
                              "adam-lr0", "adam-empty", "adam-beta1"])
def test_optimizer_rejects_bad_settings(make):
    with pytest.raises(ValueError):
        make([Tensor(START, requires_grad=True)])


# ---------------------------------------------------------- training across backends
def training_losses(backend, workers):
    """Per-step losses of Normal, 2 epochs of SGD with momentum and L2 on 200 digits."""
    with mg.backend(backend, workers=workers):
        mg.manual_seed(0)
        model = nn.Normal()
        optimizer = nn.SGD(model.parameters(), lr=0.1, momentum=0.9)
        train, _ = load_digits(250)
        loader = DataLoader(train, batch_size=32, shuffle=True, seed=0)
        losses = []
        for _ in range(2):
            for x, y in loader:
                loss = nn.nll_loss(model(Tensor(x)), y) + nn.l2_penalty(model, alpha=1e-4)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
    return np.array(losses)


def test_backends_train_to_the_same_losses():
    naive = training_losses("naive", None)
    assert len(naive) == 2 * 7  # 200 examples in batches of 32
    assert naive[-7:].mean() < naive[:7].mean()  # it learns
    np.testing.assert_allclose(training_losses("optimized", 2), naive, rtol=1e-4)
    np.testing.assert_allclose(training_losses("dynamic", None), naive, rtol=1e-4)


@pytest.mark.parametrize("loop", ["textbook", "fit"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_bigger_training_steps_reuse_their_large_buffers(optimizer, loop):
    """After the first step (which creates the gradient buffers and the optimizer
    state), a step of the Bigger network allocates no new buffer of 16 MiB or more:
    gradients are written in place, Adam's moments are updated in place. (Activations
    at batch 32 are at most 8192 x 32 floats, 1 MiB, and are made anew each step.)
    textbook: zero_grad(set_to_none=False), backward of loss + l2_penalty, step (with
    momentum for SGD); fit: fit's own step (weight decay, backward(accumulate=False,
    factored=True): no weight gradient buffers at all)."""
    mg.manual_seed(0)
    model = nn.Bigger()
    if loop == "fit":
        opt = make_optimizer(optimizer, l2_groups(model, 1e-4), 0.01)
    else:
        parameters = model.parameters()
        opt = nn.SGD(parameters, lr=0.01, momentum=0.9) if optimizer == "sgd" else nn.Adam(parameters, lr=1e-3)
    train, _ = load_digits(40)
    x, y = next(iter(DataLoader(train, batch_size=32)))
    counts = [mg.large_allocations()]
    for _ in range(3):
        if loop == "fit":
            nn.nll_loss(model(Tensor(x)), y).backward(accumulate=False, factored=True)
        else:
            loss = nn.nll_loss(model(Tensor(x)), y) + nn.l2_penalty(model, alpha=1e-4)
            opt.zero_grad(set_to_none=False)
            loss.backward()
        opt.step()
        counts.append(mg.large_allocations())
    if loop == "fit" and optimizer == "sgd":   # no gradient buffers: the weights' stay factored
        assert counts[1] == counts[0]
    else:
        assert counts[1] > counts[0]  # the first step allocated gradients (and state): the counter sees it
    assert counts[3] == counts[1]     # the later steps allocated nothing large
