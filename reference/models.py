r"""Whole models, composed of the library's public layers, trained with its optimizer steps.

Each model is a pair of functions over a flat list of parameters, in the order of the
``named_parameters()`` of the equivalent ``torch.nn`` module, so weights copy across as they are::

    params = mlp_init(rng, (784, 256, 10), np.float32)     # torch's default init, explicit rng
    logits, ctx = mlp(x, params)
    dx, d_params = mlp_backward(ctx, d_logits)             # d_params: a list like params

and one training step that chains the model's loss, its backward and an optimizer step of
``reference.optim`` (``sgd``, ``adam``, ``adamw``, ``rmsprop``, ``adagrad``, torch's conventions)::

    state = init_state("adam", params)
    (loss, new_params, new_state), ctx = train_step("mlp", (x, y), params, state, step,
                                                    optimizer="adam", lr=1e-3)
    d_inputs, d_params = train_step_backward(ctx, d_loss)  # the loss's vector-Jacobian product

``train_step_backward`` differentiates the loss (not the optimizer step): it runs the model's
backward again with the upstream ``d_loss``, so ``d_params`` is ``d_loss`` times the gradient
the step used. Models (``MODELS``): ``"mlp"`` and ``"cnn"`` (softmax cross-entropy of integer
labels, inputs ``(x, y)``), ``"lm"`` and the GAN's two halves (``reference.models_gen``).
The perceptron's learning rule is not a gradient step: ``perceptron_epoch``.

Every layer is the public one (``layers.linear``, ``activations.relu``, ``conv.conv2d``,
``pool.max_pool2d``, ``losses.cross_entropy``, ...): a model is exactly as verified as its parts,
and its backward is the chain rule written out. Inputs are checked here, with the names of
this module's arguments (``params[3]``, ``y``), before any layer sees them.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from reference import _validate as v
from reference import optim as O
from reference.activations import relu, relu_backward
from reference.activations import step as heaviside
from reference.conv import conv2d, conv2d_backward, conv_output_size
from reference.layers import linear, linear_backward
from reference.losses import cross_entropy, cross_entropy_backward
from reference.pool import max_pool2d, max_pool2d_backward

__all__ = [
    "mlp_init", "mlp", "mlp_backward", "cnn_init", "cnn", "cnn_backward",
    "classifier_loss", "classifier_loss_backward", "perceptron_epoch",
    "OPTIMIZERS", "MODELS", "hyper_parameters", "init_state", "optimizer_buffers", "train_step",
    "train_step_backward", "mlp_param_names", "CNN_PARAM_NAMES", "check_params",
    "check_state",
]


# ---------------------------------------------------------------------------------------------
# shared checks


def check_params(params, want: list[tuple[int, ...]], dtype, what: str,
                 names: list[str]) -> list[np.ndarray]:
    """``params`` as a list of arrays of the given shapes and dtype, or raise naming
    ``params[i]`` and its role (``params[0] (fc1.weight)``)."""
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"params must be a list of arrays, got {type(params).__name__}")
    if len(params) != len(want):
        raise ValueError(f"params must hold {len(want)} arrays for {what}, got {len(params)}")
    out = []
    for i, (p, shape) in enumerate(zip(params, want, strict=True)):
        name = f"params[{i}] ({names[i]})"
        p = v.float_array(p, name, ndim=len(shape), dtype=dtype)
        if p.shape != shape:
            raise ValueError(f"{name} must have shape {shape} for {what}, got {p.shape}")
        out.append(p)
    return out


def check_state(state, buffers: tuple[str, ...], shapes: list[tuple], dtype, names: list[str]):
    """The optimizer's buffers: exactly ``buffers``, each a list shaped like ``params``; errors
    name ``state['exp_avg'][i] (exp_avg of fc1.weight)``."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of buffers {list(buffers)}, got "
                        f"{type(state).__name__}")
    if sorted(state) != sorted(buffers):
        raise ValueError(f"state must have exactly the buffers {list(buffers)}, got {list(state)}")
    out = {}
    for b in buffers:
        arrs = state[b]
        if not isinstance(arrs, (list, tuple)) or len(arrs) != len(shapes):
            raise ValueError(f"state[{b!r}] must be a list of {len(shapes)} arrays (one per "
                             f"parameter), got {type(arrs).__name__}")
        out[b] = []
        for i, (a, shape) in enumerate(zip(arrs, shapes, strict=True)):
            name = f"state[{b!r}][{i}] ({b} of {names[i]})"
            a = v.float_array(a, name, dtype=dtype)
            if a.shape != shape:
                raise ValueError(f"{name} must have the shape of params[{i}] {shape}, "
                                 f"got {a.shape}")
            out[b].append(a)
    return out


def _uniform(rng: np.random.Generator, shape, bound: float, dtype) -> np.ndarray:
    return rng.uniform(-bound, bound, shape).astype(dtype)


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in v.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


# ---------------------------------------------------------------------------------------------
# MLP: linear -> relu -> ... -> linear (logits)


class MLPCtx(NamedTuple):
    linears: list   # each linear's ctx
    relus: list     # each hidden ReLU's ctx
    dtype: np.dtype


def mlp_init(rng: np.random.Generator, sizes, dtype=np.float64) -> list[np.ndarray]:
    """``[W1, b1, W2, b2, ...]`` for widths ``sizes = (in, hidden..., out)``, drawn as torch's
    ``nn.Linear`` does by default: W and b uniform in :math:`\\pm 1/\\sqrt{\\text{fan\\_in}}`."""
    rng, dt = _check_rng(rng), _float_dtype(dtype)
    sizes = [v.integer(s, f"sizes[{i}]", lo=1) for i, s in enumerate(sizes)]
    if len(sizes) < 2:
        raise ValueError(f"sizes must list at least an input and an output width, got {sizes}")
    out = []
    for k, n in zip(sizes[:-1], sizes[1:], strict=True):
        bound = 1.0 / math.sqrt(k)
        out += [_uniform(rng, (n, k), bound, dt), _uniform(rng, (n,), bound, dt)]
    return out


def _mlp_shapes(x: np.ndarray, params) -> list[tuple[int, ...]]:
    if not isinstance(params, (list, tuple)) or len(params) < 2 or len(params) % 2:
        n = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
        raise ValueError(f"params must be [W1, b1, W2, b2, ...] (an even count >= 2), got {n}")
    want, k = [], x.shape[-1]
    for i in range(0, len(params), 2):
        w = params[i]
        n = w.shape[0] if isinstance(w, np.ndarray) and w.ndim == 2 else 1
        want += [(n, k), (n,)]
        k = n
    return want


def mlp_param_names(n: int) -> list[str]:
    """``fc1.weight, fc1.bias, fc2.weight, ...`` for ``n`` parameters."""
    return [f"fc{i // 2 + 1}.{'weight' if i % 2 == 0 else 'bias'}" for i in range(n)]


def mlp(x: np.ndarray, params) -> tuple[np.ndarray, MLPCtx]:
    r"""Multi-layer perceptron with ReLU hidden layers; returns the logits (N, C).

    .. math:: a_0 = x, \quad a_l = \operatorname{relu}(a_{l-1} W_l^T + b_l)\ (l < L), \quad
              z = a_{L-1} W_L^T + b_L

    Shapes: ``x`` (N, K); ``params = [W1 (H1, K), b1 (H1,), ..., WL (C, H_{L-1}), bL (C,)]``.
    Backward (``mlp_backward``) is the chain of the parts' backwards.
    """
    x = v.float_array(x, "x", ndim=2)
    ps = check_params(params, _mlp_shapes(x, params), x.dtype, "this MLP",
                      mlp_param_names(len(params)))
    lins, relus = [], []
    a = x
    for i in range(0, len(ps), 2):
        a, c = linear(a, ps[i], ps[i + 1])
        lins.append(c)
        if i + 2 < len(ps):
            a, c = relu(a)
            relus.append(c)
    return a, MLPCtx(lins, relus, x.dtype)


def mlp_backward(ctx: MLPCtx, grad_out: np.ndarray, *, input_grad: bool = True,
                 ) -> tuple[np.ndarray | None, list[np.ndarray]]:
    r"""``(dx, [dW1, db1, ...])``: from the top, :math:`dW_l = \delta_l^T a_{l-1}`,
    :math:`db_l = \sum_n \delta_l`, :math:`\delta_{l-1} = (\delta_l W_l) \odot [z_{l-1} > 0]`
    (relu'(0) = 0) and :math:`dx = \delta_1 W_1`, with :math:`\delta_L` = ``grad_out``.
    ``input_grad=False``: dx is None (``cnn_backward``'s keyword; here dx is still computed by
    ``linear_backward``, a small product, and dropped)."""
    v.ctx_of(ctx, MLPCtx, "mlp")
    input_grad = v.boolean(input_grad, "input_grad")
    g = v.float_array(grad_out, "grad_out", dtype=ctx.dtype)
    grads: list[np.ndarray] = []
    for layer in range(len(ctx.linears) - 1, -1, -1):
        g, dw, db = linear_backward(ctx.linears[layer], g)
        grads = [dw, db] + grads
        if layer:
            (g,) = relu_backward(ctx.relus[layer - 1], g)
    return (g if input_grad else None), grads


# ---------------------------------------------------------------------------------------------
# the small CNN: conv-relu-pool, conv-relu-pool, conv-relu, flatten, linear


CNN_LAYERS = 4
CNN_PARAM_NAMES = [f"{layer}.{kind}" for layer in ("conv1", "conv2", "conv3", "fc")
                   for kind in ("weight", "bias")]


class CNNCtx(NamedTuple):
    convs: list
    relus: list
    pools: list
    fc: Any
    flat_shape: tuple
    dtype: np.dtype


def cnn_init(rng: np.random.Generator, in_shape, channels=(8, 16, 32), n_classes: int = 10,
             *, kernel: int = 3, dtype=np.float64) -> list[np.ndarray]:
    """``[conv1 W, b, conv2 W, b, conv3 W, b, fc W, b]`` for inputs (C, H, W), with torch's
    default init (uniform in :math:`\\pm 1/\\sqrt{\\text{fan\\_in}}`). Convolutions keep the size
    (padding ``kernel // 2``); each of the first two is followed by a 2x2 max-pool."""
    rng, dt = _check_rng(rng), _float_dtype(dtype)
    c, h, w = (v.integer(s, f"in_shape[{i}]", lo=1) for i, s in enumerate(in_shape))
    if len(channels) != 3:
        raise ValueError(f"channels must list 3 widths, got {channels!r}")
    k = v.integer(kernel, "kernel", lo=1)
    out = []
    for co in channels:
        co = v.integer(co, "channels", lo=1)
        bound = 1.0 / math.sqrt(c * k * k)
        out += [_uniform(rng, (co, c, k, k), bound, dt), _uniform(rng, (co,), bound, dt)]
        c = co
    for _ in range(2):
        h, w = h // 2, w // 2
    n_classes = v.integer(n_classes, "n_classes", lo=1)
    bound = 1.0 / math.sqrt(c * h * w)
    return out + [_uniform(rng, (n_classes, c * h * w), bound, dt),
                  _uniform(rng, (n_classes,), bound, dt)]


def _cnn_shapes(x: np.ndarray, params) -> list[tuple[int, ...]]:
    if not isinstance(params, (list, tuple)) or len(params) != 2 * CNN_LAYERS:
        n = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
        raise ValueError(f"params must be the CNN's {2 * CNN_LAYERS} arrays (3 convolutions and "
                         f"a dense layer, each weight and bias), got {n}")
    c, h, w = x.shape[1:]
    want = []
    for i in range(3):
        wt = params[2 * i]
        co, k = ((wt.shape[0], wt.shape[2]) if isinstance(wt, np.ndarray) and wt.ndim == 4
                 else (1, 1))
        want += [(co, c, k, k), (co,)]
        c = co
        if i < 2:
            h = conv_output_size(h, k, 1, k // 2, k // 2, 1) // 2
            w = conv_output_size(w, k, 1, k // 2, k // 2, 1) // 2
        else:
            h = conv_output_size(h, k, 1, k // 2, k // 2, 1)
            w = conv_output_size(w, k, 1, k // 2, k // 2, 1)
    fc = params[6]
    n_cls = fc.shape[0] if isinstance(fc, np.ndarray) and fc.ndim == 2 else 1
    if h < 1 or w < 1:
        raise ValueError(f"x must be at least 4 x 4 pixels for two 2x2 poolings, got {x.shape}")
    return want + [(n_cls, c * h * w), (n_cls,)]


def cnn(x: np.ndarray, params) -> tuple[np.ndarray, CNNCtx]:
    r"""The small CNN of the seed material; returns the logits (N, C).

    .. math:: h_1 = \operatorname{pool}(\operatorname{relu}(\operatorname{conv}_1 x)),\
              h_2 = \operatorname{pool}(\operatorname{relu}(\operatorname{conv}_2 h_1)),\
              h_3 = \operatorname{relu}(\operatorname{conv}_3 h_2),\
              z = \operatorname{flat}(h_3) W^T + b

    Convolutions: stride 1, padding ``k // 2`` (odd kernels keep the size), with bias;
    pooling: 2x2 max, stride 2 (odd sizes floor). ``x`` (N, C, H, W) with H, W >= 4;
    ``params = [conv1 W (C1, C, k, k), b1, conv2 W, b2, conv3 W, b3, fc W (classes,
    C3 H' W'), fc b]``, ``flat`` in (C, H, W) order as ``torch.flatten``. Backward
    (``cnn_backward``) chains the parts' backwards; max-pool's gradient goes to the first
    maximum of each window, relu'(0) = 0.
    """
    x = v.float_array(x, "x", ndim=4)
    ps = check_params(params, _cnn_shapes(x, params), x.dtype, "this CNN", CNN_PARAM_NAMES)
    convs, relus, pools = [], [], []
    a = x
    for i in range(3):
        k = ps[2 * i].shape[2]
        a, c = conv2d(a, ps[2 * i], ps[2 * i + 1], padding=k // 2)
        convs.append(c)
        a, c = relu(a)
        relus.append(c)
        if i < 2:
            a, c = max_pool2d(a, 2)
            pools.append(c)
    flat_shape = a.shape
    z, fc = linear(a.reshape(a.shape[0], math.prod(a.shape[1:])), ps[6], ps[7])
    return z, CNNCtx(convs, relus, pools, fc, flat_shape, x.dtype)


def cnn_backward(ctx: CNNCtx, grad_out: np.ndarray, *, input_grad: bool = True,
                 ) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """``(dx, [dW1, db1, dW2, db2, dW3, db3, dW_fc, db_fc])``: the chain rule through
    ``linear_backward``, ``relu_backward``, ``max_pool2d_backward`` and ``conv2d_backward``
    (each one's formula in its docstring), from the top. ``input_grad=False``: dx is None,
    not computed (the first convolution's ``col2im``, which a training step does not need)."""
    v.ctx_of(ctx, CNNCtx, "cnn")
    input_grad = v.boolean(input_grad, "input_grad")
    g = v.float_array(grad_out, "grad_out", dtype=ctx.dtype)
    g, dw, db = linear_backward(ctx.fc, g)
    grads = [dw, db]
    g = g.reshape(ctx.flat_shape)
    for i in (2, 1, 0):
        if i < 2:
            (g,) = max_pool2d_backward(ctx.pools[i], g)
        (g,) = relu_backward(ctx.relus[i], g)
        g, dw, db = conv2d_backward(ctx.convs[i], g, input_grad=input_grad or i > 0)
        grads = [dw, db] + grads
    return g, grads


# ---------------------------------------------------------------------------------------------
# classification loss of a model


class ClassifierCtx(NamedTuple):
    backward: Callable
    model_ctx: Any
    ce_ctx: Any
    dtype: np.dtype


def _labels(y, n: int, n_classes: int) -> np.ndarray:
    y = v.int_array(y, "y", ndim=1)
    if y.shape[0] != n:
        raise ValueError(f"y must hold one label per sample of x ({n}), got shape {y.shape}")
    v.labels(y, "y", n_classes)
    return y


def classifier_loss(model: str, x: np.ndarray, y: np.ndarray, params,
                    ) -> tuple[np.ndarray, ClassifierCtx]:
    r"""Mean softmax cross-entropy of a classifier's logits against integer labels:
    :math:`\ell = \frac1N \sum_n (\operatorname{logsumexp}_c z_{nc} - z_{n y_n})` with
    ``z = model(x, params)`` (``model``: ``"mlp"`` or ``"cnn"``). Returns a 0-d array.
    Backward (``classifier_loss_backward``): :math:`\partial z = g (\operatorname{softmax}(z)
    - \text{onehot}(y)) / N`, then the model's backward."""
    fwd, bwd = _CLASSIFIERS[v.choice(model, "model", tuple(_CLASSIFIERS))]
    z, mctx = fwd(x, params)
    y = _labels(y, z.shape[0], z.shape[1])
    loss, cctx = cross_entropy(z, y)
    return loss.copy(), ClassifierCtx(bwd, mctx, cctx, z.dtype)


def classifier_loss_backward(ctx: ClassifierCtx, grad_out, *, input_grad: bool = True,
                             ) -> tuple[tuple, list[np.ndarray]]:
    """``((dx, None), d_params)``: the loss's gradient times ``grad_out`` (labels: None);
    ``input_grad=False``: dx is None (the model backward's keyword, see ``cnn_backward``)."""
    v.ctx_of(ctx, ClassifierCtx, "classifier_loss")
    g = v.float_array(grad_out, "grad_out", ndim=0, dtype=ctx.dtype)
    input_grad = v.boolean(input_grad, "input_grad")
    dz, _ = cross_entropy_backward(ctx.ce_ctx, g)  # labels: no gradient (None)
    dx, dps = ctx.backward(ctx.model_ctx, dz, input_grad=input_grad)
    return (dx, None), dps


_CLASSIFIERS = {"mlp": (mlp, mlp_backward), "cnn": (cnn, cnn_backward)}


# ---------------------------------------------------------------------------------------------
# the perceptron learning rule


def perceptron_epoch(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, *,
                     lr: float = 1.0) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], None]:
    r"""One pass of Rosenblatt's rule over the samples in order, updating on mistakes only.

    .. math:: \hat y_i = H(w \cdot x_i + b), \qquad
              w \leftarrow w + \eta (y_i - \hat y_i) x_i, \quad
              b \leftarrow b + \eta (y_i - \hat y_i)

    with the step :math:`H` of ``activations.step`` (:math:`H(0) = 0`: a sample on the boundary
    is predicted 0) and labels :math:`y_i \in \{0, 1\}`. Shapes: ``x`` (N, D), ``y`` (N,) of
    integers, ``w`` (D,), ``b`` (1,). Returns ``((w, b, mistakes), None)``, ``mistakes`` an
    int64 0-d array counting the updates. Not differentiable: the rule is not a gradient step
    and the step has no derivative (nor does torch's ``heaviside``).
    """
    x = v.float_array(x, "x", ndim=2)
    w = v.float_array(w, "w", ndim=1, dtype=x.dtype)
    b = v.float_array(b, "b", ndim=1, dtype=x.dtype)
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"w must have shape ({x.shape[1]},) (x's features), got {w.shape}")
    if b.shape != (1,):
        raise ValueError(f"b must have shape (1,), got {b.shape}")
    y = _labels(y, x.shape[0], 2)
    eta = x.dtype.type(v.real(lr, "lr", lo=0.0, lo_open=True, hi=1e30))
    w, b = w.copy(), b.copy()
    mistakes = 0
    for i in range(x.shape[0]):
        a, _ = linear(x[i], w[None], b)             # (1,): w . x_i + b
        y_hat, _ = heaviside(a)
        err = x.dtype.type(y[i]) - y_hat[0]
        if err != 0:
            mistakes += 1
            w += (eta * err) * x[i]
            b += eta * err
    return (w, b, np.asarray(mistakes, np.int64)), None


# ---------------------------------------------------------------------------------------------
# one training step: a model's loss, its backward, an optimizer step


OPTIMIZERS = {
    "sgd": (O.sgd, O.sgd_init_state), "adam": (O.adam, O.adam_init_state),
    "adamw": (O.adamw, O.adam_init_state), "rmsprop": (O.rmsprop, O.rmsprop_init_state),
    "adagrad": (O.adagrad, O.adagrad_init_state),
}


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def optimizer_buffers(optimizer: str, **hyper) -> tuple[str, ...]:
    """The state buffers an optimizer keeps for these hyper-parameters, in torch's names."""
    opt = v.choice(optimizer, "optimizer", tuple(OPTIMIZERS))
    mu = _positive(hyper.get("momentum", 0.0))
    if opt == "sgd":
        return ("momentum_buffer",) if mu else ()
    if opt == "adagrad":
        return ("sum",)
    if opt == "rmsprop":
        return (("square_avg",) + (("momentum_buffer",) if mu else ())
                + (("grad_avg",) if hyper.get("centered", False) is True else ()))
    return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if hyper.get("amsgrad") is True
                                        else ())


@functools.cache
def _signature(optimizer: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(the step's keywords, the init_state's keywords, the step's keywords without a
    default) of an optimizer, read once from ``reference.optim``'s signatures."""
    step, init = OPTIMIZERS[optimizer]

    def keywords(fn):
        return [p for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]

    return (tuple(p.name for p in keywords(step)), tuple(p.name for p in keywords(init)),
            tuple(p.name for p in keywords(step) if p.default is p.empty))


def hyper_parameters(optimizer: str) -> tuple[str, ...]:
    """The keyword arguments ``optimizer``'s step of ``reference.optim`` accepts (``lr``,
    ``momentum``, ``betas``, ``amsgrad``, ...), read from its signature, and those of its
    ``*_init_state`` (``initial_accumulator_value`` for Adagrad)."""
    step, init, _ = _signature(v.choice(optimizer, "optimizer", tuple(OPTIMIZERS)))
    return step + tuple(k for k in init if k not in step)


def _split_hyper(optimizer: str, hyper: dict):
    """(the step's keywords, the init_state's keywords) of the optimizer's ``hyper``; a
    keyword neither takes is refused by name."""
    known = hyper_parameters(optimizer)
    unknown = [k for k in hyper if k not in known]
    if unknown:
        raise TypeError(f"{unknown[0]!r} is not a hyper-parameter of {optimizer} (it takes "
                        f"{', '.join(known)}), got {sorted(hyper)}")
    step, init, _ = _signature(optimizer)
    return ({k: x for k, x in hyper.items() if k in step},
            {k: x for k, x in hyper.items() if k in init})


def init_state(optimizer: str, params, **hyper) -> dict:
    """The optimizer's first state for ``params`` (``reference.optim``'s ``*_init_state``).
    ``hyper`` may be all of the step's hyper-parameters (those that shape the state, such as
    ``momentum``, ``amsgrad``, ``centered``, ``initial_accumulator_value``, are used), so the
    same keywords serve ``init_state`` and ``train_step``; others are refused by name."""
    init = OPTIMIZERS[v.choice(optimizer, "optimizer", tuple(OPTIMIZERS))][1]
    _, init_kw = _split_hyper(optimizer, hyper)
    return init(list(params), **init_kw)


class TrainStepCtx(NamedTuple):
    model: str
    backward: Callable
    loss_ctx: Any
    dtype: np.dtype


def _model(model: str):
    from reference import models_gen  # the LM and the GAN live there (they import this module)

    table = dict(MODELS)
    table.update(models_gen.MODELS)
    return table[v.choice(model, "model", tuple(table))]


# name -> (loss(*inputs, params), loss_backward(ctx, g), parameter names for n parameters)
MODELS: dict[str, tuple[Callable, Callable, Callable]] = {
    "mlp": (lambda x, y, params: classifier_loss("mlp", x, y, params), classifier_loss_backward,
            mlp_param_names),
    "cnn": (lambda x, y, params: classifier_loss("cnn", x, y, params), classifier_loss_backward,
            lambda n: CNN_PARAM_NAMES),
}


@functools.cache
def _takes_input_grad(backward: Callable) -> bool:
    """Whether a model loss's backward accepts ``input_grad`` (read once from its signature)."""
    return "input_grad" in inspect.signature(backward).parameters


def train_step(model: str, inputs: tuple, params, state: dict, step: int, *,
               optimizer: str = "sgd", **hyper):
    r"""One training step: :math:`\ell, \nabla_\theta \ell` by the model's forward and backward,
    then :math:`\theta' = \text{optimizer}(\theta, \nabla_\theta \ell, s, t)`.

    ``model`` names a loss in ``MODELS`` (or ``models_gen.MODELS``), called as
    ``loss(*inputs, params)``; ``params`` is a list of arrays; ``state`` the optimizer's
    buffers (``init_state``); ``step`` the 1-based step number; ``hyper`` the optimizer's
    keyword arguments, exactly those of ``reference.optim``'s step (``hyper_parameters``), each
    forwarded to it unchanged; an unknown one is refused by name before any work. Returns
    ``((loss, new_params, new_state), ctx)``; nothing is mutated.
    """
    loss_fn, loss_bwd, names = _model(model)
    opt = OPTIMIZERS[v.choice(optimizer, "optimizer", tuple(OPTIMIZERS))][0]
    step_kw, _ = _split_hyper(optimizer, hyper)
    if set(hyper) - set(step_kw):
        extra = sorted(set(hyper) - set(step_kw))
        raise TypeError(f"{extra[0]!r} configures {optimizer}'s initial state, not its step: "
                        f"give it to init_state, got {sorted(hyper)} for train_step")
    required = [k for k in _signature(optimizer)[2] if k not in hyper]
    if required:
        raise TypeError(f"{required[0]} must be given for {optimizer} (it has no default), "
                        f"got {sorted(hyper)}")
    buffers = optimizer_buffers(optimizer, **hyper)
    if not isinstance(inputs, tuple):
        raise TypeError(f"inputs must be a tuple of the model's data arrays, got "
                        f"{type(inputs).__name__}")
    loss, lctx = loss_fn(*inputs, params)
    state = check_state(state, buffers, [np.shape(p) for p in params], loss.dtype,
                        names(len(params)))
    # the step needs the parameters' gradients only: a backward that can skip the inputs'
    # (classifier_loss_backward: the first convolution's col2im) is told so
    skip = {"input_grad": False} if _takes_input_grad(loss_bwd) else {}
    _, grads = loss_bwd(lctx, np.ones((), loss.dtype), **skip)
    (new_params, new_state), _ = opt(list(params), grads, state, step, **hyper)
    return (loss, new_params, new_state), TrainStepCtx(model, loss_bwd, lctx, loss.dtype)


def train_step_backward(ctx: TrainStepCtx, grad_out) -> tuple[tuple, list[np.ndarray]]:
    """``(d_inputs, d_params)``: the vector-Jacobian product of the step's loss with
    ``grad_out`` (0-d), by the model's own backward (None for integer inputs). The optimizer
    step's outputs are not differentiated here (``reference.optim`` has their VJPs)."""
    v.ctx_of(ctx, TrainStepCtx, "train_step")
    g = v.float_array(grad_out, "grad_out", ndim=0, dtype=ctx.dtype)
    return ctx.backward(ctx.loss_ctx, g)
