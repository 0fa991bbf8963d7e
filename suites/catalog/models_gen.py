"""Specs of the generative and sequence models: the GAN's two training steps and the LM's.

As in ``suites/catalog/models.py`` a step's inputs are the data, every parameter (named as the
library's errors name them: ``disc.fc1.weight``, ``layers.0.linear1.weight``) and the
optimizer's buffers (``exp_avg of gen.fc1.weight``); outputs the loss (differentiable), then
the new parameters and buffers. Keyword parameters: the optimizer (SGD or Adam), its step
number and hyper-parameters, plus what no shape tells: the other network's depth for the GAN
(``generator_layers``, ``discriminator_layers``), the heads, activation and layer-norm eps for
the LM.

- ``gan_discriminator_step``: inputs x_real, z, the generator's parameters (constants: G(z) is
  detached), the discriminator's parameters and buffers. Gradients: x_real and every
  discriminator parameter.
- ``gan_generator_step``: inputs z, the discriminator's parameters (not updated, but the loss
  depends on them, so their gradients are compared too), the generator's parameters and
  buffers. Gradients: z, every discriminator and every generator parameter.
- ``lm_train_step``: tokens (B, L + 1), the LM's parameters and buffers. Gradients: every
  parameter (tied: the embedding's is the sum of its two uses).

Twins: ``nn.Sequential`` MLPs / an ``nn.Module`` of ``nn.Embedding``, ``nn.TransformerEncoderLayer``
(batch_first, the same bool causal mask) and ``nn.Linear`` (tied: its weight is the embedding's),
run by ``torch.func.functional_call`` with the case's tensors, then ``torch.optim`` on clones
(``models.torch_optimizer_step``). float32 tolerance: the twin's own float32 error on the case
(``_attention_tools._oracle_tol``; its derivation is in the comment above it there): worst-case
bounds through attention and layer norm are 1e3-1e6 times what happens.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from reference import models as M
from reference import models_gen as G
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog._layer_tools import cut_in_largest_gap
from suites.catalog.attention import _oracle_tol, _torch_add_pe
from suites.catalog.models import _buffers, _optimizer, _split, torch_optimizer_step
from suites.catalog.spec import Case, Cost, Invalid, Invariant, Spec

FAMILY = "models"
GAN_MAX_LINEARS = 3  # 1-2 hidden layers per network (the benchmark sizes have 2)
LM_MAX_LAYERS = 2


# ---------------------------------------------------------------------------------------------
# the spec's flat arrays <-> train_step


class StepCtx(NamedTuple):
    spec: str
    names: tuple   # the grad inputs the backward's gradients belong to, in its order
    ctx: Any


class GenStep:
    """A spec's forward/backward over ``models.train_step``. ``layout(arrays, kw)`` gives
    ``(data inputs, params, state, names of the gradients in backward's order, kw left)``."""

    def __init__(self, name: str, model: str, layout, grad_inputs: tuple[str, ...]):
        self.name, self.model, self.layout, self.grad_inputs = name, model, layout, grad_inputs

    def forward(self, *arrays, optimizer, step, **kw):
        data, params, state, names, hyper = self.layout(arrays, kw, optimizer)
        (loss, p1, s1), ctx = M.train_step(self.model, data, params, state, step,
                                           optimizer=optimizer, **hyper)
        bufs = _buffers(optimizer, hyper)
        return (loss, *p1, *(a for b in bufs for a in s1[b])), StepCtx(self.name, names, ctx)

    def backward(self, ctx, grad_out):
        if not isinstance(ctx, StepCtx) or ctx.spec != self.name:
            got = ctx.spec if isinstance(ctx, StepCtx) else type(ctx).__name__
            raise TypeError(f"ctx must be the ctx of a {self.name} forward, got {got}")
        d_inputs, d_params = M.train_step_backward(ctx.ctx, grad_out)
        flat = []
        for d in d_inputs:
            if isinstance(d, list):
                flat += d
            elif d is not None:
                flat.append(d)
        by_name = dict(zip(ctx.names, flat + list(d_params), strict=True))
        return tuple(by_name.get(n) for n in self.grad_inputs)


def _layers_kw(kw: dict, key: str, n_arrays: int, before: int) -> tuple[int, dict]:
    """The other network's depth, with room left for at least one trained layer."""
    kw = dict(kw)
    n = kw.pop(key)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= (n_arrays - before) // 2 - 1:
        raise ValueError(f"{key} must be an int in [1, {(n_arrays - before) // 2 - 1}] (the "
                         f"other network's linear layers among the {n_arrays} arrays), got {n!r}")
    return n, kw


def _d_layout(arrays, kw, optimizer):
    gl, hyper = _layers_kw(kw, "generator_layers", len(arrays), 2)
    k = 2 + 2 * gl
    params, state = _split(tuple(arrays[k:]), _buffers(optimizer, hyper))
    names = ("x_real",) + tuple(G.disc_param_names(len(params)))
    return (arrays[0], arrays[1], list(arrays[2:k])), params, state, names, hyper


def _g_layout(arrays, kw, optimizer):
    dl, hyper = _layers_kw(kw, "discriminator_layers", len(arrays), 1)
    k = 1 + 2 * dl
    params, state = _split(tuple(arrays[k:]), _buffers(optimizer, hyper))
    names = (("z",) + tuple(G.disc_param_names(2 * dl))
             + tuple(G.gen_param_names(len(params))))
    return (arrays[0], list(arrays[1:k])), params, state, names, hyper


def _lm_layout(arrays, kw, optimizer):
    kw = dict(kw)
    config = G.LMConfig(kw.pop("num_heads"), kw.pop("activation"), kw.pop("layer_norm_eps"))
    params, state = _split(tuple(arrays[1:]), _buffers(optimizer, kw))
    return (arrays[0], config), params, state, tuple(G.lm_param_names(len(params))), kw


_D_GRADS = ("x_real",) + tuple(G.disc_param_names(2 * GAN_MAX_LINEARS))
_G_GRADS = (("z",) + tuple(G.disc_param_names(2 * GAN_MAX_LINEARS))
            + tuple(G.gen_param_names(2 * GAN_MAX_LINEARS)))
_LM_ALL = tuple(G.lm_param_names(12 * LM_MAX_LAYERS + 3))  # untied: every name


# ---------------------------------------------------------------------------------------------
# the torch twins


@functools.lru_cache(maxsize=64)
def _mlp(widths: tuple[int, ...], leaky: bool) -> nn.Module:
    layers: list[nn.Module] = []
    for i, (k, n) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(k, n, device="meta"))
        if i + 2 < len(widths):
            layers.append(nn.LeakyReLU(G.LEAKY_SLOPE) if leaky else nn.ReLU())
    return nn.Sequential(*layers)


def mlp_torch(x, params, leaky: bool):
    mod = _mlp((params[0].shape[1],) + tuple(p.shape[0] for p in params[::2]), leaky)
    names = [n for n, _ in mod.named_parameters()]
    return functional_call(mod, dict(zip(names, params, strict=True)), (x,))


def _bce(logit, target: float):
    return F.binary_cross_entropy_with_logits(logit, torch.full_like(logit, target))


def _d_loss_torch(x_real, z, g_params, d_params):
    with torch.no_grad():
        fake = mlp_torch(z, g_params, False)  # detached
    return _bce(mlp_torch(x_real, d_params, True), 1.0) + _bce(mlp_torch(fake, d_params, True),
                                                               0.0)


def _g_loss_torch(z, d_params, g_params):
    return _bce(mlp_torch(mlp_torch(z, g_params, False), d_params, True), 1.0)


class TorchLM(nn.Module):
    """Embedding + sinusoidal PE + causal post-norm encoder layers + (tied) linear head,
    next-token cross-entropy of ``tokens`` (B, L + 1)."""

    def __init__(self, vocab, d_model, heads, ff, layers, tied, activation, eps, device="meta"):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_model, device=device)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, activation=activation,
                                       layer_norm_eps=eps, batch_first=True, device=device)
            for _ in range(layers)])
        self.head = nn.Linear(d_model, vocab, device=device)
        if tied:
            self.head.weight = self.embedding.weight

    def forward(self, tokens):
        length = tokens.shape[1] - 1
        h = _torch_add_pe(self.embedding(tokens[:, :-1]), batch_first=True)
        mask = torch.triu(torch.ones(length, length, dtype=torch.bool, device=tokens.device), 1)
        for layer in self.layers:
            h = layer(h, src_mask=mask)
        z = self.head(h)
        return F.cross_entropy(z.reshape(-1, z.shape[-1]), tokens[:, 1:].reshape(-1))


@functools.lru_cache(maxsize=64)
def _lm_module(vocab, d, heads, ff, layers, tied, activation, eps):
    mod = TorchLM(vocab, d, heads, ff, layers, tied, activation, eps)
    return mod, tuple(n for n, _ in mod.named_parameters())


def lm_torch(tokens, params, num_heads, activation, layer_norm_eps):
    untied = len(params) % 12 == 3
    layers = (len(params) - 2 - untied) // 12
    vocab, d = params[0].shape
    mod, names = _lm_module(vocab, d, num_heads, params[5].shape[0], layers, not untied,
                            activation, layer_norm_eps)
    return functional_call(mod, dict(zip(names, params, strict=True)), (tokens,))


def _twin(layout, loss_of):
    """``loss_of(data, params)`` -> scalar, its gradient, then torch.optim on clones."""

    def run(*arrays, optimizer, step, **kw):
        data, params, state, _, hyper = layout(arrays, kw, optimizer)
        names = M.optimizer_buffers(optimizer, **hyper)
        diff = torch.is_grad_enabled()
        with torch.enable_grad():
            leaves = params if diff else [p.detach().requires_grad_() for p in params]
            loss = loss_of(data, leaves)
            grads = torch.autograd.grad(loss, leaves, retain_graph=diff)
        new = torch_optimizer_step(optimizer, params, grads, state, names, step, hyper)
        return (loss if diff else loss.detach(), *new)

    return run


# ---------------------------------------------------------------------------------------------
# cases and sizes


def _named(data: dict, groups, bufs: dict, trained_names) -> dict:
    inputs = dict(data)
    for names, arrs in groups:
        inputs.update(dict(zip(names, arrs, strict=True)))
    for b, arrs in bufs.items():
        inputs.update({f"{b} of {n}": a for n, a in zip(trained_names, arrs, strict=True)})
    return inputs


def _widths(draw, lo, hi):
    return [draw(st.integers(lo, hi)) for _ in range(draw(st.integers(1, GAN_MAX_LINEARS - 1)))]


@st.composite
def _gan_cases(draw, dtype, half: str):
    """Real batch 1-5, fake batch 1-5, noise and data widths 1-4, 1-2 hidden layers of width
    1-5 in each network (leaky ReLU in D, ReLU in G), seeded normal data."""
    rng = draw(S.seeds())
    nz, nd = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    gp, dp = G.gan_init(rng, nz, nd, _widths(draw, 1, 5), _widths(draw, 1, 5), np.float64)
    gp, dp = [p.astype(dtype) for p in gp], [p.astype(dtype) for p in dp]
    z = S.normal(rng, (draw(st.integers(1, 5)), nz), dtype)
    gn, dn = G.gen_param_names(len(gp)), G.disc_param_names(len(dp))
    if half == "d":
        x = S.normal(rng, (draw(st.integers(1, 5)), nd), dtype)
        bufs, hyper = draw(_optimizer(dtype, dp, rng))
        inputs = _named({"x_real": x, "z": z}, [(gn, gp), (dn, dp)], bufs, dn)
        return Case(inputs, dict(hyper, generator_layers=len(gp) // 2))
    bufs, hyper = draw(_optimizer(dtype, gp, rng))
    inputs = _named({"z": z}, [(dn, dp), (gn, gp)], bufs, gn)
    return Case(inputs, dict(hyper, discriminator_layers=len(dp) // 2))


def _adam_bufs(params, dtype):
    rng = np.random.default_rng(1)
    return {"exp_avg": [S.normal(rng, p.shape, dtype, 1e-3) for p in params],
            "exp_avg_sq": [np.abs(S.normal(rng, p.shape, dtype, 1e-3)) ** 2 for p in params]}


_ADAM = dict(optimizer="adam", step=10, lr=2e-4, betas=(0.5, 0.999))


def _gan_size(half: str, n: int, nz: int, g_hidden, nd: int, d_hidden):
    def build(dtype):
        rng = np.random.default_rng(0)
        gp, dp = G.gan_init(rng, nz, nd, g_hidden, d_hidden, dtype)
        z = S.normal(rng, (n, nz), dtype)
        gn, dn = G.gen_param_names(len(gp)), G.disc_param_names(len(dp))
        if half == "d":
            x = S.normal(rng, (n, nd), dtype)
            inputs = _named({"x_real": x, "z": z}, [(gn, gp), (dn, dp)], _adam_bufs(dp, dtype), dn)
            return Case(inputs, dict(_ADAM, generator_layers=len(gp) // 2))
        inputs = _named({"z": z}, [(dn, dp), (gn, gp)], _adam_bufs(gp, dtype), gn)
        return Case(inputs, dict(_ADAM, discriminator_layers=len(dp) // 2))

    return build


@st.composite
def _lm_cases(draw, dtype):
    """Batch 1-2, length 1-4, 1-2 heads of width 1-3, 1-2 layers, feed-forward 1-6, vocab
    2-6, tied or untied head, ReLU or GELU; every parameter moved off lm_init's zeros and ones
    by N(0, 0.1) so no bias or norm parameter is special."""
    rng = draw(S.seeds())
    b, length = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    heads, hd = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    vocab = draw(st.integers(2, 6))
    params = G.lm_init(rng, vocab, heads * hd, draw(st.integers(1, LM_MAX_LAYERS)),
                       draw(st.integers(1, 6)), tied=draw(st.booleans()))
    params = [(p + 0.1 * rng.standard_normal(p.shape)).astype(dtype) for p in params]
    tokens = rng.integers(0, vocab, (b, length + 1))
    bufs, hyper = draw(_optimizer(dtype, params, rng))
    names = G.lm_param_names(len(params))
    inputs = _named({"tokens": tokens}, [(names, params)], bufs, names)
    return Case(inputs, dict(hyper, num_heads=heads,
                             activation=draw(st.sampled_from(["relu", "gelu"])),
                             layer_norm_eps=1e-5))


def _lm_size(b: int, length: int, d: int, heads: int, layers: int, vocab: int):
    def build(dtype):
        rng = np.random.default_rng(0)
        params = G.lm_init(rng, vocab, d, layers, 4 * d, tied=False, dtype=dtype)
        tokens = rng.integers(0, vocab, (b, length + 1))
        names = G.lm_param_names(len(params))
        inputs = _named({"tokens": tokens}, [(names, params)], _adam_bufs(params, dtype), names)
        return Case(inputs, dict(_ADAM, lr=1e-3, num_heads=heads, activation="relu",
                                 layer_norm_eps=1e-5))

    return build


# ---------------------------------------------------------------------------------------------
# gradcheck: kinks moved away


MARGIN = 0.05


def _shift_hidden(a, ws, bs):
    """New hidden biases (float64) putting 0 in the widest gap of each unit's pre-activations
    over the rows of ``a`` (at least MARGIN from every row), layer by layer; returns
    (biases, output of the net)."""
    new = []
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        w, b = w.astype(np.float64), b.astype(np.float64).copy()
        z = a @ w.T + b
        if i + 1 < len(ws):
            for j in range(z.shape[1]):
                b[j] -= cut_in_largest_gap(z[:, j], MARGIN)
            z = a @ w.T + b
            a = np.maximum(z, 0) + G.LEAKY_SLOPE * np.minimum(z, 0)  # the sign is what counts
        else:
            a = z
        new.append(b)
    return new, a


def _smooth_gan(half: str):
    def smooth(case: Case) -> Case:
        inputs = dict(case.inputs)
        gn = [k for k in inputs if k.startswith("gen.")]
        dn = [k for k in inputs if k.startswith("disc.")]
        gw, gb = [inputs[k] for k in gn[::2]], [inputs[k] for k in gn[1::2]]
        dw = [inputs[k] for k in dn[::2]]
        z = inputs["z"].astype(np.float64)
        if half == "g":  # ReLU (kink at 0): the same shift is right for G's units
            gb2, _ = _shift_hidden(z, gw, gb)
            gb = [b.astype(gw[0].dtype) for b in gb2]
            inputs.update(dict(zip(gn[1::2], gb, strict=True)))
        fake = z
        for i, (w, b) in enumerate(zip(gw, gb, strict=True)):
            fake = fake @ w.astype(np.float64).T + b.astype(np.float64)
            if i + 1 < len(gw):
                fake = np.maximum(fake, 0)
        rows = fake if half == "g" else np.vstack([inputs["x_real"].astype(np.float64), fake])
        db2, _ = _shift_hidden(rows, dw, [inputs[k] for k in dn[1::2]])
        inputs.update({k: b.astype(dw[0].dtype) for k, b in zip(dn[1::2], db2, strict=True)})
        return Case(inputs, case.params)

    return smooth


GRADCHECK_EPS = 0.1


def _smooth_lm(case: Case) -> Case:
    """Layer norm's eps raised to 0.1 (a row of near-equal features amplifies its input's
    movements by 1/sqrt(eps): see attention's ``_smooth_encoder``), and for ReLU each layer's
    linear1 bias shifted, layer by layer, so no feed-forward pre-activation of the batch lies
    within MARGIN-scaled reach of 0 (the reach of ``_smooth_encoder``)."""
    from reference.attention import add_positional_encoding, transformer_encoder_layer
    from reference.layers import embedding

    p = dict(case.params, layer_norm_eps=max(case.params["layer_norm_eps"], GRADCHECK_EPS))
    if p["activation"] != "relu":
        return Case(case.inputs, p)
    inputs = dict(case.inputs)
    names = G.lm_param_names(len([k for k in inputs if k != "tokens" and " of " not in k]))
    tok = inputs["tokens"]
    h, _ = embedding(tok[:, :-1], inputs[names[0]].astype(np.float64))
    h, _ = add_positional_encoding(h, batch_first=True)
    mask = G.causal_mask(tok.shape[1] - 1)
    layers = (len(names) - 2 - (len(names) % 12 == 3)) // 12
    for i in range(layers):
        ln = names[1 + 12 * i:13 + 12 * i]

        def run(h=h, ln=ln):
            return transformer_encoder_layer(h, *(inputs[k].astype(np.float64) for k in ln),
                                             src_mask=mask, num_heads=p["num_heads"],
                                             layer_norm_eps=p["layer_norm_eps"],
                                             batch_first=True)

        _, ctx = run()
        pre, z = ctx.saved["ff_pre"], ctx.saved["ff_in"]
        w1 = inputs[ln[4]].astype(np.float64)
        reach = 1e-2 * np.sqrt((z ** 2).sum(1).max() + (w1 ** 2).sum(1) + 1.0)
        b1 = inputs[ln[5]].astype(np.float64).copy()
        for j in range(pre.shape[1]):
            cands = np.concatenate([[0.0], -pre[:, j] + 1.01 * reach[j],
                                    -pre[:, j] - 1.01 * reach[j]])
            ok = [c for c in cands if np.all(np.abs(pre[:, j] + c) >= reach[j])]
            b1[j] += min(ok, key=abs)
        inputs[ln[5]] = b1.astype(inputs[ln[5]].dtype)
        h, _ = run()
    return Case(inputs, p)


# ---------------------------------------------------------------------------------------------
# cost, invariants, invalid inputs


def _params_of(case: Case, prefix=("gen.", "disc.", "embedding", "layers.", "head.")):
    return [a for k, a in case.inputs.items() if k.startswith(prefix) and " of " not in k]


def _gan_cost(case: Case) -> Cost:
    n = case.inputs["z"].shape[0] + case.inputs.get("x_real", case.inputs["z"]).shape[0]
    ws = [a for a in _params_of(case) if a.ndim == 2]
    n_p = sum(a.size for a in _params_of(case))
    return Cost(3 * 2.0 * n * sum(w.size for w in ws) + 12 * n_p,
                2.0 * sum(a.nbytes for a in case.inputs.values()))


def _lm_cost(case: Case) -> Cost:
    tok = case.inputs["tokens"]
    rows, length = tok.shape[0] * (tok.shape[1] - 1), tok.shape[1] - 1
    ps = _params_of(case)
    d = ps[0].shape[1]
    mat = sum(a.size for a in ps[1:] if a.ndim == 2) + ps[0].size
    n_p = sum(a.size for a in ps)
    flops = 3 * (2.0 * rows * mat + 4.0 * rows * length * d * (len(ps) // 12))
    return Cost(flops + 12 * n_p, 2.0 * sum(a.nbytes for a in case.inputs.values()))


def _loss_nonneg(case: Case, outs) -> None:
    assert outs[0] >= 0, f"loss {outs[0]} < 0 (a cross-entropy)"


def _lr_zero_keeps(spec_step: GenStep, trained_prefix: tuple[str, ...]):
    def check(case: Case, outs) -> None:
        outs0, _ = spec_step.forward(*case.inputs.values(), **dict(case.params, lr=0.0))
        trained = [k for k in case.inputs if k.startswith(trained_prefix) and " of " not in k]
        for i, name in enumerate(trained):
            assert np.array_equal(outs0[1 + i], case.inputs[name]), f"lr = 0 moved {name}"

    return Invariant("lr = 0 leaves every trained parameter unchanged", check)


def _edit(small, **changes):
    def make():
        case = small(np.dtype(np.float64))
        inputs, params = dict(case.inputs), dict(case.params)
        for k, val in changes.items():
            if k in inputs:
                inputs[k] = val(inputs[k]) if callable(val) else val
            else:
                params[k] = val
        return Case(inputs, params)

    return make


def _common_invalid(small, first: str, index: int = 0):
    return (
        Invalid("a weight of the wrong shape", _edit(small, **{first: lambda w: w[:, :-1]}),
                ValueError, rf"params\[{index}\]"),
        Invalid("an unknown optimizer", _edit(small, optimizer="lbfgs"), ValueError, "optimizer"),
        Invalid("step 0", _edit(small, step=0), ValueError, "step"),
        Invalid("a negative lr", _edit(small, lr=-1.0), ValueError, "lr"),
        Invalid("a hyper-parameter Adam lacks", _edit(small, nesterov=True), TypeError,
                "nesterov"),
    )


def _register_gan(half: str, summary: str, sizes):
    name = f"gan_{'discriminator' if half == 'd' else 'generator'}_step"
    layout = _d_layout if half == "d" else _g_layout
    step = GenStep(name, "gan_discriminator" if half == "d" else "gan_generator", layout,
                   _D_GRADS if half == "d" else _G_GRADS)
    if half == "d":
        loss_of = lambda data, ps: _d_loss_torch(data[0], data[1], list(data[2]), ps)  # noqa: E731
    else:
        loss_of = lambda data, ps: _g_loss_torch(data[0], list(data[1]), ps)  # noqa: E731
    first = "disc.fc1.weight" if half == "d" else "gen.fc1.weight"
    invalid = _common_invalid(sizes["small"], first)
    if half == "d":
        invalid += (Invalid("x_real of another width than G(z)",
                            _edit(sizes["small"], x_real=lambda x: x[:, :-1]), ValueError,
                            "x_real"),)
    register(Spec(
        name=name, family=FAMILY, summary=summary, forward=step.forward,
        backward=step.backward, grad_inputs=step.grad_inputs, torch=_twin(layout, loss_of),
        cases=lambda dtype: _gan_cases(dtype, half), sizes=sizes, cost=_gan_cost,
        case_tol=_oracle_tol(name), smooth=_smooth_gan(half),
        invariants=(Invariant("loss >= 0", _loss_nonneg),
                    _lr_zero_keeps(step, ("disc.",) if half == "d" else ("gen.",))),
        invalid=invalid,
    ))


# Benchmark sizes: batch 64, noise 100, G 100-128-256-784, D 784-256-128-1 (widths 128-256);
# large: batch 256; small (CI): batch 16, noise 16, G 16-32-64-64, D 64-64-32-1.
for _half, _summary in (("d", "GAN discriminator step: BCE(D(x), 1) + BCE(D(G(z).detach()), 0),"
                              " backward, optimizer step"),
                        ("g", "GAN generator step (non-saturating): BCE(D(G(z)), 1), backward "
                              "through D and G, optimizer step")):
    _register_gan(_half, _summary, {
        "small": _gan_size(_half, 16, 16, (32, 64), 64, (64, 32)),
        "medium": _gan_size(_half, 64, 100, (128, 256), 784, (256, 128)),
        "large": _gan_size(_half, 256, 100, (128, 256), 784, (256, 128))})


_LM_STEP = GenStep("lm_train_step", "lm", _lm_layout, _LM_ALL)
_LM_SIZES = {"small": _lm_size(2, 8, 16, 2, 2, 32), "medium": _lm_size(16, 64, 128, 4, 2, 128),
             "large": _lm_size(16, 64, 128, 4, 2, 128)}
# Seed size: d_model 128, 2 layers, sequence 64, batch 16 (medium and large), vocab 128 (bytes
# of ASCII text), feed-forward 4 d_model; small (CI): d_model 16, 2 layers (sizes give every
# input), sequence 8, batch 2.
register(Spec(
    name="lm_train_step", family=FAMILY,
    summary="transformer LM (embedding + PE + causal encoder layers + tied/untied head), "
            "next-token CE, backward, optimizer step",
    forward=_LM_STEP.forward, backward=_LM_STEP.backward, grad_inputs=_LM_ALL,
    torch=_twin(_lm_layout, lambda data, ps: lm_torch(data[0], ps, *data[1])),
    cases=_lm_cases, sizes=_LM_SIZES, cost=_lm_cost, case_tol=_oracle_tol("lm_train_step"),
    smooth=_smooth_lm,
    invariants=(Invariant("loss >= 0", _loss_nonneg),
                _lr_zero_keeps(_LM_STEP, ("embedding", "layers.", "head."))),
    invalid=_common_invalid(_LM_SIZES["small"], "layers.0.self_attn.in_proj_weight", 1) + (
        Invalid("a token outside the vocabulary", _edit(_LM_SIZES["small"],
                                                        tokens=lambda t: t + 1000),
                ValueError, "tokens"),
        Invalid("tokens without a next token", _edit(_LM_SIZES["small"],
                                                     tokens=lambda t: t[:, :1]),
                ValueError, "tokens"),
        Invalid("heads not dividing d_model", _edit(_LM_SIZES["small"], num_heads=3),
                ValueError, "num_heads")),
))
