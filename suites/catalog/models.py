"""Specs of the models family: one training step per model, and the perceptron's epoch.

A step's inputs are the data, every parameter (``params[i]``, in the torch module's
``named_parameters()`` order) and the optimizer's buffers (``exp_avg of fc1.weight``): the names
the library's own errors use (``params[0] (fc1.weight)``). Keyword parameters:
``optimizer`` (``sgd`` or ``adam``), the step
number and the optimizer's hyper-parameters. Outputs: the loss (the one differentiable output),
then the new parameters and the new buffers (compared in forward parity). The spec's backward
is the loss's vector-Jacobian product by the model's own backward, so gradient parity compares
the gradient of EVERY parameter (and of the input) with torch's autograd, and the float64
gradcheck differentiates the whole model's loss along one random direction in all of them.

The twin is the ``nn.Module`` (``nn.Sequential`` of ``nn.Linear``/``nn.Conv2d``/``nn.ReLU``/
``nn.MaxPool2d``) with the case's tensors swapped in by ``torch.func.functional_call`` (so
autograd sees the very tensors the checks hand over), ``F.cross_entropy``, and a
``torch.optim`` optimizer stepping clones of the parameters with the gradient of that loss
(the buffers loaded into its state). With autograd on, the loss stays attached to the inputs
and its graph is kept, so the generic check differentiates it again, as the reference's
backward runs the model's backward again: both sides do the same work in each pass.

float32 tolerances are derived per case (``_model_bounds``: a first-order bound of each
evaluation's rounding error through the whole step, doubled for two evaluations).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from reference import models as M
from suites.catalog import _model_bounds as E
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog._layer_tools import cut_in_largest_gap
from suites.catalog.spec import DEFAULT_TOL, FLOAT32, Case, Cost, Invalid, Invariant, Spec, Tol

FAMILY = "models"


# ---------------------------------------------------------------------------------------------
# the spec's flat arrays <-> (data, params, state)


def _buffers(optimizer, hyper) -> tuple[str, ...]:
    try:
        return M.optimizer_buffers(optimizer, **hyper)
    except (TypeError, ValueError):
        return ()  # the library names the bad optimizer when it is called


def _split(arrays: tuple, names: tuple[str, ...]):
    """``(params, state)`` from ``params..., buffer 1 of each param..., buffer 2 ...``."""
    k = len(arrays) // (1 + len(names)) if len(arrays) % (1 + len(names)) == 0 else len(arrays)
    params = list(arrays[:k])
    state = {b: list(arrays[k * (j + 1):k * (j + 2)]) for j, b in enumerate(names)}
    return params, state




class StepSpec:
    """Forward and backward of ``models.train_step`` over a spec's positional arrays."""

    def __init__(self, model: str, n_data: int, n_grads: int):
        self.model, self.n_data, self.n_grads = model, n_data, n_grads

    def forward(self, *arrays, optimizer, step, **hyper):
        names = _buffers(optimizer, hyper)
        params, state = _split(arrays[self.n_data:], names)
        (loss, p1, s1), ctx = M.train_step(self.model, tuple(arrays[:self.n_data]), params, state,
                                           step, optimizer=optimizer, **hyper)
        return (loss, *p1, *(a for b in names for a in s1[b])), ctx

    def backward(self, ctx, grad_out):
        if isinstance(ctx, M.TrainStepCtx) and ctx.model != self.model:
            raise TypeError(f"ctx must be the ctx of a {self.model!r} train_step, got one of "
                            f"{ctx.model!r}")
        d_inputs, d_params = M.train_step_backward(ctx, grad_out)
        floats = tuple(d for d in d_inputs if d is not None)
        out = floats + tuple(d_params)
        return out + (None,) * (self.n_grads - len(out))


def param_names(case: Case) -> list[str]:
    """The case's parameter inputs, in order (not the data, not the optimizer's buffers)."""
    return [k for k in case.inputs if k not in ("x", "y") and " of " not in k]


# ---------------------------------------------------------------------------------------------
# the torch twin


_TORCH_OPT = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
              "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}


def torch_optimizer_step(optimizer: str, params, grads, state, names, step: int, hyper):
    """``torch.optim`` stepping clones of ``params`` with ``grads``, from the given buffers;
    returns the new parameters then the new buffers (each buffer for every parameter)."""
    ps = [p.detach().clone() for p in params]
    for p, g in zip(ps, grads, strict=True):
        p.grad = g.detach()
    opt = _TORCH_OPT[optimizer](ps, **hyper)
    for i, p in enumerate(ps):
        st = opt.state[p]
        for b in names:
            st[b] = state[b][i].detach().clone()
        if optimizer == "sgd" and step == 1:
            st.pop("momentum_buffer", None)  # torch's first step: the buffer is the gradient
        elif optimizer != "sgd":
            st["step"] = torch.tensor(float(step - 1))
    opt.step()
    return ps + [opt.state[p][b] for b in names for p in ps]


def twin_step(loss_of, n_data: int):
    """The twin of a step: ``loss_of(data, params)`` -> scalar, then torch.optim."""

    def run(*arrays, optimizer, step, **hyper):
        names = M.optimizer_buffers(optimizer, **hyper)
        params, state = _split(arrays[n_data:], names)
        diff = torch.is_grad_enabled()
        with torch.enable_grad():
            leaves = params if diff else [p.detach().requires_grad_() for p in params]
            loss = loss_of(arrays[:n_data], leaves)
            grads = torch.autograd.grad(loss, leaves, retain_graph=diff)
        new = torch_optimizer_step(optimizer, params, grads, state, names, step, hyper)
        return (loss if diff else loss.detach(), *new)

    return run


@functools.lru_cache(maxsize=64)
def _mlp_module(widths: tuple[int, ...]) -> tuple[nn.Module, tuple[str, ...]]:
    layers: list[nn.Module] = []
    for i, (k, n) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(k, n, device="meta"))
        if i + 2 < len(widths):
            layers.append(nn.ReLU())
    mod = nn.Sequential(*layers)
    return mod, tuple(n for n, _ in mod.named_parameters())


@functools.lru_cache(maxsize=64)
def _cnn_module(c_in: int, channels: tuple[int, ...], k: int, flat: int, n_cls: int):
    c, layers = c_in, []
    for i, co in enumerate(channels):
        layers += [nn.Conv2d(c, co, k, padding=k // 2, device="meta"), nn.ReLU()]
        if i < 2:
            layers.append(nn.MaxPool2d(2))
        c = co
    mod = nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, n_cls, device="meta"))
    return mod, tuple(n for n, _ in mod.named_parameters())


def mlp_torch(x, params):
    widths = (params[0].shape[1],) + tuple(p.shape[0] for p in params[::2])
    mod, names = _mlp_module(widths)
    return functional_call(mod, dict(zip(names, params, strict=True)), (x,))


def cnn_torch(x, params):
    channels = tuple(p.shape[0] for p in params[0:6:2])
    mod, names = _cnn_module(x.shape[1], channels, params[0].shape[2], params[6].shape[1],
                             params[6].shape[0])
    return functional_call(mod, dict(zip(names, params, strict=True)), (x,))


def _classifier_twin(net):
    return twin_step(lambda data, params: F.cross_entropy(net(data[0], params), data[1]), 2)


# ---------------------------------------------------------------------------------------------
# float32 tolerances: first-order bounds (``_model_bounds``), doubled for two evaluations


def _mlp_bound(x, params, g0):
    a, ea = x.astype(np.float64), np.zeros(x.shape)
    nodes = []
    for i in range(0, len(params), 2):
        a, ea, node = E.dense(a, ea, params[i], params[i + 1])
        rnode = None
        if i + 2 < len(params):
            a, ea, rnode = E.relu(a, ea)
        nodes.append((node, rnode))
    return a, ea, nodes


def _mlp_bound_back(nodes, g, eg):
    grads = []
    for node, rnode in reversed(nodes):
        if rnode is not None:
            g, eg = E.relu_back(rnode, g, eg)
        g, eg, _, e_dw, _, e_db = E.dense_back(node, g, eg)
        grads = [e_dw, e_db] + grads
    return eg, grads


def _cnn_bound(x, params, g0):
    a, ea = x.astype(np.float64), np.zeros(x.shape)
    nodes = []
    for i in range(3):
        k = params[2 * i].shape[2]
        a, ea, cnode = E.conv(a, ea, params[2 * i].astype(np.float64),
                              params[2 * i + 1].astype(np.float64), padding=k // 2)
        a, ea, rnode = E.relu(a, ea)
        pnode = None
        if i < 2:
            a, ea, pnode = E.maxpool(a, ea, kernel_size=2)
        nodes.append((cnode, rnode, pnode))
    shape = a.shape
    z, ez, fc = E.dense(a.reshape(a.shape[0], -1), ea.reshape(a.shape[0], -1), params[6],
                        params[7])
    return z, ez, (nodes, fc, shape)


def _cnn_bound_back(tape, g, eg):
    nodes, fc, shape = tape
    g, eg, _, e_dw, _, e_db = E.dense_back(fc, g, eg)
    grads = [e_dw, e_db]
    g, eg = g.reshape(shape), eg.reshape(shape)
    for cnode, rnode, pnode in reversed(nodes):
        if pnode is not None:
            g, eg = E.maxpool_back(pnode, g, eg)
        g, eg = E.relu_back(rnode, g, eg)
        g, edx, edw, edb = E.conv_back(cnode, g, eg)
        eg = edx
        grads = [edw, edb] + grads
    return eg, grads


_BOUNDS = {"mlp": (_mlp_bound, _mlp_bound_back), "cnn": (_cnn_bound, _cnn_bound_back)}


def _classifier_tol(model: str):
    fwd, back = _BOUNDS[model]

    def case_tol(case: Case, upstream) -> Tol | None:
        arrays = list(case.inputs.values())
        x, y = arrays[0], arrays[1]
        if x.dtype != FLOAT32:
            return None
        p = dict(case.params)
        optimizer, step = p.pop("optimizer"), p.pop("step")
        names = M.optimizer_buffers(optimizer, **p)
        params, state = _split(tuple(arrays[2:]), names)
        g0 = 1.0 if upstream is None else float(upstream[0])
        z, ez, tape = fwd(x, params, g0)
        loss, e_loss, dz, e_dz = E.cross_entropy(z, ez, y, g0)
        e_dx, e_grads = back(tape, dz, e_dz)
        base = DEFAULT_TOL[FLOAT32]
        if upstream is not None:
            bound = E.worst(e_dx, *e_grads)
        else:
            grads = _exact_grads(case)
            bounds = [e_loss]
            for i, (pp, g, eg) in enumerate(zip(params, grads, e_grads, strict=True)):
                if optimizer == "sgd":
                    buf = state["momentum_buffer"][i] if names else None
                    bounds += E.sgd(pp, g, eg, buf, step, **p)
                else:
                    bounds += E.adam(pp, g, eg, state["exp_avg"][i], state["exp_avg_sq"][i],
                                     step, **p)
            bound = E.worst(*[np.asarray(b) for b in bounds])
        return Tol(base.rtol, max(base.atol, 2 * bound))

    return case_tol


def _exact_grads(case: Case) -> list[np.ndarray]:
    """The float64 parameter gradients of the case's loss (the reference's, in float64)."""
    arrays = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in case.inputs.values()]
    spec = case.params
    names = M.optimizer_buffers(spec["optimizer"], **{k: v for k, v in spec.items()
                                                      if k not in ("optimizer", "step")})
    params, _ = _split(tuple(arrays[2:]), names)
    model = "cnn" if arrays[0].ndim == 4 else "mlp"
    loss, ctx = M.classifier_loss(model, arrays[0], arrays[1], params)
    return M.classifier_loss_backward(ctx, np.ones(()))[1]


# ---------------------------------------------------------------------------------------------
# cases


_LR = st.sampled_from([1e-3, 0.01, 0.1, 0.5])


@st.composite
def _optimizer(draw, dtype, params, rng):
    """``(buffers dict name -> list, keyword params)``: SGD (momentum, Nesterov, weight decay)
    or Adam, at step 1 or later with drawn buffers (Adam's second moment >= 0)."""
    step = draw(st.one_of(st.just(1), st.integers(2, 50)))
    if draw(st.booleans()):
        mu = draw(st.sampled_from([0.0, 0.5, 0.9]))
        hyper = dict(optimizer="sgd", step=step, lr=draw(_LR), momentum=mu,
                     nesterov=mu > 0 and draw(st.booleans()),
                     weight_decay=draw(st.sampled_from([0.0, 1e-2])))
        bufs = ({"momentum_buffer": [S.normal(rng, p.shape, dtype, 0.1) for p in params]}
                if mu else {})
    else:
        hyper = dict(optimizer="adam", step=step, lr=draw(_LR),
                     betas=draw(st.sampled_from([(0.9, 0.999), (0.5, 0.9)])),
                     eps=draw(st.sampled_from([1e-8, 1e-3])),
                     weight_decay=draw(st.sampled_from([0.0, 1e-2])))
        bufs = {"exp_avg": [S.normal(rng, p.shape, dtype, 0.1) for p in params],
                "exp_avg_sq": [np.abs(S.normal(rng, p.shape, dtype, 0.1)) ** 2 for p in params]}
        if step == 1:
            bufs = {b: [np.zeros_like(a) for a in arrs] for b, arrs in bufs.items()}
    return bufs, hyper


def _case(data: dict, params: list, bufs: dict, hyper: dict, names: list[str]) -> Case:
    """Inputs named as the library's errors name them: the parameters by role
    (``fc1.weight``), the buffers as ``exp_avg of fc1.weight``."""
    inputs = dict(data)
    inputs.update(dict(zip(names, params, strict=True)))
    for b, arrs in bufs.items():
        inputs.update({f"{b} of {n}": a for n, a in zip(names, arrs, strict=True)})
    return Case(inputs, hyper)


MLP_MAX_LAYERS = 2  # the seed sizes have 2 (benchmark sizes must give every input)


@st.composite
def _mlp_cases(draw, dtype):
    """Batch 1-6, 1-2 layers of width 1-6, 1-5 classes, seeded normal data and weights."""
    rng = draw(S.seeds())
    n = draw(st.integers(1, 6))
    widths = [draw(st.integers(1, 6))]
    widths += [draw(st.integers(1, 6)) for _ in range(draw(st.integers(0, MLP_MAX_LAYERS - 1)))]
    widths.append(draw(st.integers(1, 5)))
    params = [p.astype(dtype) for p in M.mlp_init(rng, widths, np.float64)]
    x = S.normal(rng, (n, widths[0]), dtype)
    y = rng.integers(0, widths[-1], n)
    bufs, hyper = draw(_optimizer(dtype, params, rng))
    return _case({"x": x, "y": y}, params, bufs, hyper, M.mlp_param_names(len(params)))


@st.composite
def _cnn_cases(draw, dtype):
    """Batch 1-3, 1-2 input channels, 4-9 pixels a side (odd too), widths 1-4, kernel 1 or 3."""
    rng = draw(S.seeds())
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    h, w = draw(st.integers(4, 9)), draw(st.integers(4, 9))
    k = draw(st.sampled_from([1, 3]))
    channels = tuple(draw(st.integers(1, 4)) for _ in range(3))
    params = M.cnn_init(rng, (c, h, w), channels, draw(st.integers(2, 4)), kernel=k, dtype=dtype)
    x = S.normal(rng, (n, c, h, w), dtype)
    y = rng.integers(0, params[-1].shape[0], n)
    bufs, hyper = draw(_optimizer(dtype, params, rng))
    return _case({"x": x, "y": y}, params, bufs, hyper, M.CNN_PARAM_NAMES)


def _size_case(params: list, data: dict, dtype, names) -> Case:
    rng = np.random.default_rng(1)
    bufs = {"exp_avg": [S.normal(rng, p.shape, dtype, 1e-3) for p in params],
            "exp_avg_sq": [np.abs(S.normal(rng, p.shape, dtype, 1e-3)) ** 2 for p in params]}
    return _case(data, params, bufs, dict(optimizer="adam", step=10, lr=1e-3), names)


def _mlp_size(n: int, widths: tuple[int, ...]):
    def build(dtype):
        rng = np.random.default_rng(0)
        params = M.mlp_init(rng, widths, dtype)
        data = {"x": S.normal(rng, (n, widths[0]), dtype), "y": rng.integers(0, widths[-1], n)}
        return _size_case(params, data, dtype, M.mlp_param_names(len(params)))

    return build


def _cnn_size(n: int, hw: int, channels: tuple[int, ...]):
    def build(dtype):
        rng = np.random.default_rng(0)
        params = M.cnn_init(rng, (1, hw, hw), channels, 10, dtype=dtype)
        data = {"x": S.normal(rng, (n, 1, hw, hw), dtype), "y": rng.integers(0, 10, n)}
        return _size_case(params, data, dtype, M.CNN_PARAM_NAMES)

    return build


# ---------------------------------------------------------------------------------------------
# gradcheck: ReLU inputs moved off the kink


MARGIN = 0.05


def _smooth_mlp(case: Case) -> Case:
    """Shift each hidden layer's biases so that no ReLU input of the batch lies within MARGIN
    of 0 (the shift puts 0 in the widest gap of each unit's pre-activations), layer by layer."""
    inputs = dict(case.inputs)
    names = param_names(case)
    a = inputs["x"].astype(np.float64)
    for i in range(0, len(names) - 2, 2):
        w, b = inputs[names[i]], inputs[names[i + 1]].astype(np.float64).copy()
        z = a @ w.T + b
        for j in range(z.shape[1]):
            b[j] -= cut_in_largest_gap(z[:, j], MARGIN)
        inputs[names[i + 1]] = b.astype(w.dtype)
        a = np.maximum(a @ w.T + b, 0)
    return Case(inputs, case.params)


def _smooth_cnn(case: Case) -> Case:
    """The same per-channel bias shift for the three convolutions' ReLUs. Max-pool ties have
    probability 0 on the cases' continuous random data, but near-ties within the step's reach
    do not: the gradcheck judges a disagreement again at a shorter step (``KINK_RETRY``)."""
    from reference.conv import conv2d
    from reference.pool import max_pool2d

    inputs = dict(case.inputs)
    names = param_names(case)
    a = inputs["x"].astype(np.float64)
    for i in range(3):
        w = inputs[names[2 * i]]
        b = inputs[names[2 * i + 1]].astype(np.float64).copy()
        z, _ = conv2d(a, w.astype(np.float64), b, padding=w.shape[2] // 2)
        for j in range(z.shape[1]):
            b[j] -= cut_in_largest_gap(z[:, j], MARGIN)
        inputs[names[2 * i + 1]] = b.astype(w.dtype)
        a, _ = conv2d(a, w.astype(np.float64), b, padding=w.shape[2] // 2)
        a = np.maximum(a, 0)
        if i < 2:
            a, _ = max_pool2d(a, 2)
    return Case(inputs, case.params)


# ---------------------------------------------------------------------------------------------
# cost, invariants, invalid inputs


def _step_cost(model_flops):
    def cost(case: Case) -> Cost:
        arrays = list(case.inputs.values())
        params = arrays[2:2 + len(param_names(case))]
        n_p = sum(p.size for p in params)
        moved = sum(a.nbytes for a in arrays) * 2  # read everything, write params and state
        return Cost(3 * model_flops(arrays[0], params) + 12 * n_p, moved)

    return cost


def _mlp_flops(x, params) -> float:
    return sum(2.0 * x.shape[0] * w.size for w in params[::2])


def _cnn_flops(x, params) -> float:
    n, _, h, w = x.shape
    total = 0.0
    for i in range(3):
        total += 2.0 * n * params[2 * i].size * h * w
        if i < 2:
            h, w = h // 2, w // 2
    return total + 2.0 * n * params[6].size


def _loss_nonneg(case: Case, outs) -> None:
    assert outs[0] >= 0, f"cross-entropy {outs[0]} < 0"


def _lr_zero_keeps(model: str):
    def check(case: Case, outs) -> None:
        arrays = list(case.inputs.values())
        spec = StepSpec(model, 2, 0)
        outs0, _ = spec.forward(*arrays, **dict(case.params, lr=0.0))
        for i, name in enumerate(param_names(case)):
            assert np.array_equal(outs0[1 + i], arrays[2 + i]), f"lr = 0 moved {name}"

    return Invariant("lr = 0 leaves every parameter unchanged", check)


def _invalid(small, first: str) -> tuple[Invalid, ...]:
    def edit(**changes):
        def make():
            case = small(np.dtype(np.float64))
            inputs = dict(case.inputs)
            params = dict(case.params)
            for k, val in changes.items():
                if k in inputs:
                    inputs[k] = val(inputs[k]) if callable(val) else val
                else:
                    params[k] = val
            return Case(inputs, params)
        return make

    return (
        Invalid("a label out of range", edit(y=lambda y: y + 1000), ValueError, r"\by\b"),
        Invalid("labels of another batch size", edit(y=lambda y: y[:-1]), ValueError, r"\by\b"),
        Invalid("a weight of the wrong shape", edit(**{first: lambda w: w[:, :-1]}),
                ValueError, r"params\[0\]"),
        Invalid("an unknown optimizer", edit(optimizer="lbfgs"), ValueError, "optimizer"),
        Invalid("step 0", edit(step=0), ValueError, "step"),
        Invalid("a negative lr", edit(lr=-1.0), ValueError, "lr"),
        Invalid("a hyper-parameter Adam lacks", edit(nesterov=True), TypeError, "nesterov"),
    )


def _classifier_spec(model, summary, cases, sizes, names, flops, smooth):
    step = StepSpec(model, 2, 1 + len(names))
    net = {"mlp": mlp_torch, "cnn": cnn_torch}[model]
    return Spec(
        name=f"{model}_train_step", family=FAMILY, summary=summary,
        forward=step.forward, backward=step.backward,
        grad_inputs=("x",) + tuple(names),
        torch=_classifier_twin(net), cases=cases, sizes=sizes, cost=_step_cost(flops),
        case_tol=_classifier_tol(model), smooth=smooth,
        invariants=(Invariant("loss >= 0", _loss_nonneg), _lr_zero_keeps(model)),
        invalid=_invalid(sizes["small"], names[0]),
    )


# Seed sizes: 784-256-10 at batch 64 and 256; CI's small size is a 64-32-10 net at batch 8.
register(_classifier_spec(
    "mlp", "MLP (ReLU) + softmax cross-entropy, backward, SGD/Adam step", _mlp_cases,
    {"small": _mlp_size(8, (64, 32, 10)), "medium": _mlp_size(64, (784, 256, 10)),
     "large": _mlp_size(256, (784, 256, 10))},
    M.mlp_param_names(2 * MLP_MAX_LAYERS), _mlp_flops, _smooth_mlp))

# Seed size: 28x28 at batch 64 (channels 8, 16, 32); small: 8x8 (digits) at batch 8.
register(_classifier_spec(
    "cnn", "conv-pool, conv-pool, conv, dense CNN + cross-entropy, backward, optimizer step",
    _cnn_cases,
    {"small": _cnn_size(8, 8, (4, 8, 8)), "medium": _cnn_size(64, 28, (8, 16, 32)),
     "large": _cnn_size(256, 28, (8, 16, 32))},
    M.CNN_PARAM_NAMES, _cnn_flops, _smooth_cnn))


# ---------------------------------------------------------------------------------------------
# the perceptron: one epoch of the learning rule (no derivative: not a gradient method)


def _perceptron_twin(x, y, w, b, *, lr):
    """The same rule with tensors: ``heaviside`` of ``F.linear``, an update on each mistake."""
    w, b = w.clone(), b.clone()
    mistakes = 0
    zero = torch.zeros((), dtype=x.dtype)
    for i in range(x.shape[0]):
        y_hat = torch.heaviside(F.linear(x[i], w[None], b), zero)
        err = y[i].to(x.dtype) - y_hat[0]
        if err.item() != 0:
            mistakes += 1
            w = w + (lr * err) * x[i]
            b = b + lr * err
    return w, b, torch.tensor(mistakes, dtype=torch.int64)


def _perceptron_forward(x, y, w, b, *, lr):
    return M.perceptron_epoch(x, y, w, b, lr=lr)


@st.composite
def _perceptron_cases(draw, dtype):
    """Integer-valued features, weights and bias and a dyadic rate: every dot product and
    update is exact in float32 and float64, so both sides decide every sign alike (with real
    values a sum within rounding of 0 could legitimately go either way)."""
    rng = draw(S.seeds())
    n, d = draw(st.integers(1, 12)), draw(st.integers(1, 5))
    x = rng.integers(-5, 6, (n, d)).astype(dtype)
    y = rng.integers(0, 2, n)
    zero_start = draw(st.booleans())
    w = np.zeros(d, dtype) if zero_start else rng.integers(-3, 4, d).astype(dtype)
    b = np.zeros(1, dtype) if zero_start else rng.integers(-3, 4, 1).astype(dtype)
    return Case({"x": x, "y": y, "w": w, "b": b},
                {"lr": draw(st.sampled_from([1.0, 0.5, 2.0, 0.25]))})


def _perceptron_size(n: int, d: int):
    def build(dtype):
        rng = np.random.default_rng(0)
        x = rng.integers(-5, 6, (n, d)).astype(dtype)
        w_star = rng.standard_normal(d)
        y = (x @ w_star > 0).astype(np.int64)
        return Case({"x": x, "y": y, "w": np.zeros(d, dtype), "b": np.zeros(1, dtype)},
                    {"lr": 1.0})

    return build


def _mistakes_bounded(case: Case, outs) -> None:
    n = case.inputs["x"].shape[0]
    assert 0 <= int(outs[2]) <= n, f"{int(outs[2])} mistakes in an epoch of {n} samples"


def _perceptron_invalid():
    base = _perceptron_size(4, 3)

    def edit(name, fn):
        def make():
            case = base(np.dtype(np.float64))
            inputs = dict(case.inputs)
            inputs[name] = fn(inputs[name])
            return Case(inputs, case.params)
        return make

    return (Invalid("labels outside {0, 1}", edit("y", lambda y: y + 2), ValueError, r"\by\b"),
            Invalid("w of the wrong length", edit("w", lambda w: w[:-1]), ValueError, r"\bw\b"),
            Invalid("b of shape (2,)", edit("b", lambda b: np.zeros(2)), ValueError, r"\bb\b"))


register(Spec(
    name="perceptron_epoch", family=FAMILY,
    summary="Rosenblatt's rule: one pass, w += lr (y - H(w.x + b)) x on mistakes",
    forward=_perceptron_forward, torch=_perceptron_twin, cases=_perceptron_cases,
    sizes={"small": _perceptron_size(64, 16), "medium": _perceptron_size(512, 64),
           "large": _perceptron_size(4096, 256)},
    cost=lambda case: Cost(4.0 * case.inputs["x"].size, 2.0 * case.inputs["x"].nbytes),
    nondifferentiable="the step activation has no derivative (torch.heaviside has none)",
    invariants=(Invariant("0 <= mistakes <= samples", _mistakes_bounded),),
    invalid=_perceptron_invalid(),
))
