r"""Generative and sequence models: one GAN training step (both halves) and a transformer LM.

The conventions of ``reference.models`` hold: parameters are flat lists in the order of the
equivalent ``torch.nn`` module's ``named_parameters()``, every part is a public layer of the
library (``layers.linear``, ``layers.embedding``, ``activations.relu``/``leaky_relu``,
``attention.add_positional_encoding``, ``attention.transformer_encoder_layer``,
``losses.binary_cross_entropy_with_logits``, ``losses.cross_entropy``), and a backward is the
chain rule over the parts' backwards. The losses register in ``MODELS`` so that
``models.train_step`` runs them with any optimizer of ``reference.optim``::

    g_params, d_params = gan_init(rng, noise_dim=16, data_dim=2, g_hidden=(64,), d_hidden=(64,))
    # discriminator step: G(z) is a constant (torch's detach); d_params are trained
    (loss_d, d_params, s_d), _ = train_step("gan_discriminator", (x_real, z, g_params),
                                            d_params, s_d, t, optimizer="adam", lr=2e-4)
    # generator step, non-saturating: BCE(D(G(z)), 1); g_params are trained, D is fixed
    (loss_g, g_params, s_g), _ = train_step("gan_generator", (z, d_params), g_params, s_g, t,
                                            optimizer="adam", lr=2e-4)

    params = lm_init(rng, vocab=64, d_model=32, num_layers=2, dim_feedforward=64, tied=True)
    (loss, params, state), _ = train_step("lm", (tokens, LMConfig(num_heads=4)), params,
                                          state, t, optimizer="adam", lr=1e-3)

The noise ``z`` is an explicit input (randomness is the caller's). ``train_step`` gives a
model's loss only its data inputs and its parameters, so the LM's hyper-parameters (heads,
activation, layer-norm eps) travel as an ``LMConfig`` among the inputs.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from reference import _validate as v
from reference.activations import leaky_relu, leaky_relu_backward, relu, relu_backward
from reference.attention import (
    add_positional_encoding,
    add_positional_encoding_backward,
    transformer_encoder_layer,
    transformer_encoder_layer_backward,
)
from reference.layers import embedding, embedding_backward, linear, linear_backward
from reference.losses import (
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_backward,
    cross_entropy,
    cross_entropy_backward,
)
from reference.models import _check_rng, _float_dtype, _uniform, check_params

__all__ = [
    "LEAKY_SLOPE", "gan_init", "generator", "generator_backward", "discriminator",
    "discriminator_backward", "gan_discriminator_loss", "gan_discriminator_loss_backward",
    "gan_generator_loss", "gan_generator_loss_backward", "gen_param_names",
    "disc_param_names", "LMConfig", "lm_init", "lm_param_names", "lm_loss",
    "lm_loss_backward", "causal_mask", "MODELS",
]

# The discriminator's hidden activation: leaky ReLU of slope 0.2 (the DCGAN convention).
LEAKY_SLOPE = 0.2


# ---------------------------------------------------------------------------------------------
# the GAN's two MLPs


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}.fc{i // 2 + 1}.{'weight' if i % 2 == 0 else 'bias'}" for i in range(n)]


def gen_param_names(n: int) -> list[str]:
    """``gen.fc1.weight, gen.fc1.bias, ...`` for ``n`` generator parameters."""
    return _names("gen", n)


def disc_param_names(n: int) -> list[str]:
    """``disc.fc1.weight, disc.fc1.bias, ...`` for ``n`` discriminator parameters."""
    return _names("disc", n)


def _chain_shapes(x: np.ndarray, params, what: str) -> list[tuple[int, ...]]:
    if not isinstance(params, (list, tuple)) or len(params) < 2 or len(params) % 2:
        n = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
        raise ValueError(f"{what} params must be [W1, b1, W2, b2, ...] (an even count >= 2), "
                         f"got {n}")
    want, k = [], x.shape[-1]
    for i in range(0, len(params), 2):
        w = params[i]
        n = w.shape[0] if isinstance(w, np.ndarray) and w.ndim == 2 else 1
        want += [(n, k), (n,)]
        k = n
    return want


class MLPActCtx(NamedTuple):
    linears: list
    acts: list
    leaky: bool
    dtype: np.dtype


def _mlp_act(x, params, leaky: bool, names, what: str, x_name: str):
    x = v.float_array(x, x_name, ndim=2)
    ps = check_params(params, _chain_shapes(x, params, what), x.dtype, what, names(len(params)))
    lins, acts, a = [], [], x
    for i in range(0, len(ps), 2):
        a, c = linear(a, ps[i], ps[i + 1])
        lins.append(c)
        if i + 2 < len(ps):
            a, c = leaky_relu(a, LEAKY_SLOPE) if leaky else relu(a)
            acts.append(c)
    return a, MLPActCtx(lins, acts, leaky, x.dtype)


def _mlp_act_backward(ctx: MLPActCtx, g):
    grads: list[np.ndarray] = []
    for layer in range(len(ctx.linears) - 1, -1, -1):
        g, dw, db = linear_backward(ctx.linears[layer], g)
        grads = [dw, db] + grads
        if layer:
            back = leaky_relu_backward if ctx.leaky else relu_backward
            (g,) = back(ctx.acts[layer - 1], g)
    return g, grads


def gan_init(rng: np.random.Generator, noise_dim: int, data_dim: int, g_hidden=(128,),
             d_hidden=(128,), dtype=np.float64) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(g_params, d_params)``: a generator ``noise_dim -> g_hidden... -> data_dim`` and a
    discriminator ``data_dim -> d_hidden... -> 1``, each ``[W1, b1, ...]`` drawn as torch's
    ``nn.Linear`` default (uniform in :math:`\\pm 1/\\sqrt{\\text{fan\\_in}}`)."""
    rng, dt = _check_rng(rng), _float_dtype(dtype)
    nz = v.integer(noise_dim, "noise_dim", lo=1)
    nd = v.integer(data_dim, "data_dim", lo=1)
    gw = [v.integer(h, f"g_hidden[{i}]", lo=1) for i, h in enumerate(g_hidden)]
    dw = [v.integer(h, f"d_hidden[{i}]", lo=1) for i, h in enumerate(d_hidden)]

    def init(sizes):
        out = []
        for k, n in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(k)
            out += [_uniform(rng, (n, k), bound, dt), _uniform(rng, (n,), bound, dt)]
        return out

    return init([nz, *gw, nd]), init([nd, *dw, 1])


def generator(z: np.ndarray, g_params) -> tuple[np.ndarray, MLPActCtx]:
    r"""The generator MLP: ReLU hidden layers, a linear output (N, data_dim).

    .. math:: a_0 = z,\quad a_l = \operatorname{relu}(a_{l-1} W_l^T + b_l)\ (l < L),\quad
              G(z) = a_{L-1} W_L^T + b_L

    Backward (``generator_backward``) returns ``(dz, [dW1, db1, ...])``:
    :math:`dW_l = \delta_l^T a_{l-1}`, :math:`db_l = \sum_n \delta_l`,
    :math:`\delta_{l-1} = (\delta_l W_l) \odot [a_{l-1} > 0]`, :math:`dz = \delta_1 W_1`.
    """
    return _mlp_act(z, g_params, False, gen_param_names, "the generator", "z")


def generator_backward(ctx: MLPActCtx, grad_out) -> tuple[np.ndarray, list[np.ndarray]]:
    r"""``(dz, d g_params)``: :math:`\delta_{l-1} = (\delta_l W_l) \odot
    [z_{l-1} > 0]`, :math:`dW_l = \delta_l^T a_{l-1}`, :math:`db_l = \sum_n \delta_l`."""
    v.ctx_of(ctx, MLPActCtx, "generator")
    return _mlp_act_backward(ctx, v.float_array(grad_out, "grad_out", dtype=ctx.dtype))


def discriminator(x: np.ndarray, d_params) -> tuple[np.ndarray, MLPActCtx]:
    r"""The discriminator MLP: leaky-ReLU hidden layers (slope ``LEAKY_SLOPE``), one logit per
    sample (N, 1).

    .. math:: a_0 = x,\quad a_l = \operatorname{lrelu}_{0.2}(a_{l-1} W_l^T + b_l)\ (l < L),
              \quad D(x) = a_{L-1} W_L^T + b_L

    Backward (``discriminator_backward``) as the generator's, with
    :math:`\operatorname{lrelu}'(s) = 1` for :math:`s > 0`, else 0.2.
    """
    out, ctx = _mlp_act(x, d_params, True, disc_param_names, "the discriminator", "x")
    if out.shape[1] != 1:
        raise ValueError(f"d_params must end in one output unit (a logit), got "
                         f"{out.shape[1]} (params[{len(d_params) - 2}] "
                         f"{np.shape(d_params[-2])})")
    return out, ctx


def discriminator_backward(ctx: MLPActCtx, grad_out) -> tuple[np.ndarray, list[np.ndarray]]:
    r"""``(dx, d d_params)``: :math:`\delta_{l-1} = (\delta_l W_l) \odot
    \operatorname{lrelu}'(z_{l-1})`, :math:`dW_l = \delta_l^T a_{l-1}`,
    :math:`db_l = \sum_n \delta_l`."""
    v.ctx_of(ctx, MLPActCtx, "discriminator")
    return _mlp_act_backward(ctx, v.float_array(grad_out, "grad_out", dtype=ctx.dtype))


def _nonempty(a, name: str) -> None:
    if isinstance(a, np.ndarray) and a.ndim == 2 and a.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample (the loss is a mean over "
                         f"them), got shape {a.shape}")


class GanDCtx(NamedTuple):
    real: MLPActCtx
    fake: MLPActCtx
    bce_real: Any
    bce_fake: Any
    dtype: np.dtype


def gan_discriminator_loss(x_real: np.ndarray, z: np.ndarray, g_params, d_params,
                           ) -> tuple[np.ndarray, GanDCtx]:
    r"""The discriminator's loss, the generator's output held constant (torch's ``detach``):

    .. math:: \ell_D = \operatorname{BCE}(D(x), 1) + \operatorname{BCE}(D(G(z)), 0)
              = \frac1N \sum_n \log(1 + e^{-D(x_n)}) + \frac1M \sum_m \log(1 + e^{D(G(z_m))})

    (each term the mean BCE-with-logits of its batch; ``x_real`` (N, data_dim), ``z``
    (M, noise_dim)). Returns a 0-d array. Backward (``gan_discriminator_loss_backward``):
    :math:`\partial D(x_n) = g (\sigma(D(x_n)) - 1) / N`, :math:`\partial D(G(z_m)) = g\,
    \sigma(D(G(z_m))) / M`, each through ``discriminator_backward``; the parameters'
    gradients add; nothing flows into G or z.
    """
    x_real = v.float_array(x_real, "x_real", ndim=2)
    _nonempty(x_real, "x_real")
    _nonempty(z, "z")
    fake, _ = generator(z, g_params)
    if fake.dtype != x_real.dtype:
        raise TypeError(f"z and g_params must have x_real's dtype {x_real.dtype}, got "
                        f"{fake.dtype}")
    if fake.shape[1] != x_real.shape[1]:
        raise ValueError(f"g_params must generate x_real's width {x_real.shape[1]}, got "
                         f"{fake.shape[1]}")
    d_real, c_real = discriminator(x_real, d_params)
    d_fake, c_fake = discriminator(fake, d_params)
    l_real, b_real = binary_cross_entropy_with_logits(d_real, np.ones_like(d_real))
    l_fake, b_fake = binary_cross_entropy_with_logits(d_fake, np.zeros_like(d_fake))
    loss = np.asarray(l_real + l_fake, x_real.dtype)
    return loss, GanDCtx(c_real, c_fake, b_real, b_fake, x_real.dtype)


def gan_discriminator_loss_backward(ctx: GanDCtx, grad_out) -> tuple[tuple, list[np.ndarray]]:
    r"""``((dx_real, None, None), d d_params)``: :math:`\partial D(x) = g(\sigma(D(x)) - 1)/N`,
    :math:`\partial D(G(z)) = g\,\sigma(D(G(z)))/M` through ``discriminator_backward``, the two
    parameter gradients summed (z and the generator get none: G(z) is a constant here)."""
    v.ctx_of(ctx, GanDCtx, "gan_discriminator_loss")
    g = v.float_array(grad_out, "grad_out", ndim=0, dtype=ctx.dtype)
    (dr, _) = binary_cross_entropy_with_logits_backward(ctx.bce_real, g)
    (df, _) = binary_cross_entropy_with_logits_backward(ctx.bce_fake, g)
    dx, grads_r = discriminator_backward(ctx.real, dr)
    _, grads_f = discriminator_backward(ctx.fake, df)
    return (dx, None, None), [a + b for a, b in zip(grads_r, grads_f, strict=True)]


class GanGCtx(NamedTuple):
    gen: MLPActCtx
    disc: MLPActCtx
    bce: Any
    dtype: np.dtype


def gan_generator_loss(z: np.ndarray, d_params, g_params) -> tuple[np.ndarray, GanGCtx]:
    r"""The generator's non-saturating loss: the discriminator is asked to call G(z) real,

    .. math:: \ell_G = \operatorname{BCE}(D(G(z)), 1) = \frac1M \sum_m \log(1 + e^{-D(G(z_m))})

    Returns a 0-d array. Backward (``gan_generator_loss_backward``): :math:`\partial D(G(z_m))
    = g (\sigma(D(G(z_m))) - 1) / M`, through ``discriminator_backward`` (which also gives the
    discriminator's parameters' gradients: the loss depends on them, though the generator step
    does not update them) and ``generator_backward``.
    """
    _nonempty(z, "z")
    fake, cg = generator(z, g_params)
    logit, cd = discriminator(fake, d_params)
    if logit.dtype != fake.dtype:
        raise TypeError(f"d_params must have z's dtype {fake.dtype}, got {logit.dtype}")
    loss, bce = binary_cross_entropy_with_logits(logit, np.ones_like(logit))
    return np.asarray(loss), GanGCtx(cg, cd, bce, fake.dtype)


def gan_generator_loss_backward(ctx: GanGCtx, grad_out) -> tuple[tuple, list[np.ndarray]]:
    r"""``((dz, d d_params), d g_params)``: :math:`\partial D(G(z)) = g (\sigma(D(G(z))) - 1)/M`,
    then ``discriminator_backward`` (giving :math:`\partial G(z)` and the discriminator's
    gradients) and ``generator_backward``."""
    v.ctx_of(ctx, GanGCtx, "gan_generator_loss")
    g = v.float_array(grad_out, "grad_out", ndim=0, dtype=ctx.dtype)
    (dl, _) = binary_cross_entropy_with_logits_backward(ctx.bce, g)
    dfake, d_grads = discriminator_backward(ctx.disc, dl)
    dz, g_grads = generator_backward(ctx.gen, dfake)
    return (dz, d_grads), g_grads


# ---------------------------------------------------------------------------------------------
# the transformer language model


class LMConfig(NamedTuple):
    """The LM's hyper-parameters that no parameter's shape tells."""

    num_heads: int
    activation: str = "relu"
    layer_norm_eps: float = 1e-5


def lm_param_names(n: int) -> list[str]:
    """The LM's parameter names for ``n`` parameters (``embedding.weight``,
    ``layers.0.self_attn.in_proj_weight``, ..., ``head.weight`` when untied, ``head.bias``),
    in torch's ``named_parameters()`` order (a tied head's weight is the embedding's)."""
    untied = n % 12 == 3
    layers = (n - 2 - untied) // 12
    enc = ["self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
           "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
           "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"]
    names = ["embedding.weight"] + [f"layers.{i}.{e}" for i in range(layers) for e in enc]
    names += ["head.weight"] * untied + ["head.bias"]
    names += [f"params[{i}]" for i in range(len(names), n)]
    return names[:n]


def lm_init(rng: np.random.Generator, vocab: int, d_model: int, num_layers: int,
            dim_feedforward: int, *, tied: bool = True, dtype=np.float64) -> list[np.ndarray]:
    """The LM's parameters in ``lm_param_names`` order: embedding (and an untied head's
    weight) uniform in :math:`\\pm 0.1` (PyTorch's word_language_model example), head bias 0;
    each encoder layer as ``nn.TransformerEncoderLayer`` initialises it (in_proj xavier
    uniform, its bias and out_proj's bias 0, linears torch's default, norms 1 and 0)."""
    rng, dt = _check_rng(rng), _float_dtype(dtype)
    nv = v.integer(vocab, "vocab", lo=1)
    d = v.integer(d_model, "d_model", lo=1)
    nl = v.integer(num_layers, "num_layers", lo=1)
    ff = v.integer(dim_feedforward, "dim_feedforward", lo=1)
    tied = v.boolean(tied, "tied")
    out = [_uniform(rng, (nv, d), 0.1, dt)]
    for _ in range(nl):
        out += [_uniform(rng, (3 * d, d), math.sqrt(6.0 / (4 * d)), dt), np.zeros(3 * d, dt),
                _uniform(rng, (d, d), 1 / math.sqrt(d), dt), np.zeros(d, dt),
                _uniform(rng, (ff, d), 1 / math.sqrt(d), dt),
                _uniform(rng, (ff,), 1 / math.sqrt(d), dt),
                _uniform(rng, (d, ff), 1 / math.sqrt(ff), dt),
                _uniform(rng, (d,), 1 / math.sqrt(ff), dt),
                np.ones(d, dt), np.zeros(d, dt), np.ones(d, dt), np.zeros(d, dt)]
    if not tied:
        out.append(_uniform(rng, (nv, d), 0.1, dt))
    return out + [np.zeros(nv, dt)]


def causal_mask(length: int) -> np.ndarray:
    """(L, L) bool, True above the diagonal: position i attends to positions <= i (torch's
    ``nn.Transformer.generate_square_subsequent_mask`` as a bool mask, True = masked)."""
    n = v.integer(length, "length", lo=1)
    return np.triu(np.ones((n, n), np.bool_), 1)


def _lm_shapes(params, vocab_dim) -> tuple[list[tuple[int, ...]], int, bool]:
    if not isinstance(params, (list, tuple)) or len(params) < 14 or len(params) % 12 not in (2, 3):
        n = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
        raise ValueError("params must be [embedding, 12 per encoder layer..., (head weight,) "
                         f"head bias]: 12 k + 2 (tied) or 12 k + 3 (untied) arrays, k >= 1, "
                         f"got {n}")
    nv, d = vocab_dim
    untied = len(params) % 12 == 3
    layers = (len(params) - 2 - untied) // 12
    want = [(nv, d)]
    for i in range(layers):
        w1 = params[1 + 12 * i + 4]
        ff = w1.shape[0] if isinstance(w1, np.ndarray) and w1.ndim == 2 else 1
        want += [(3 * d, d), (3 * d,), (d, d), (d,), (ff, d), (ff,), (d, ff), (d,),
                 (d,), (d,), (d,), (d,)]
    want += [(nv, d)] * untied + [(nv,)]
    return want, layers, untied


class LMCtx(NamedTuple):
    emb: Any
    pe: Any
    layers: list
    head: Any
    ce: Any
    untied: bool
    dtype: np.dtype


def lm_loss(tokens: np.ndarray, params, *, num_heads: int, activation: str = "relu",
            layer_norm_eps: float = 1e-5) -> tuple[np.ndarray, LMCtx]:
    r"""Next-token cross-entropy of a causal transformer language model (0-d array).

    With ``tokens`` (B, L + 1) of integers in [0, V): inputs :math:`u = ` tokens[:, :L],
    targets :math:`y = ` tokens[:, 1:], and

    .. math::
        h_0 = E[u] + PE, \quad h_k = \operatorname{Enc}_k(h_{k-1}; \text{causal mask}), \quad
        z = h_K W_o^T + b_o, \quad \ell = \frac{1}{BL} \sum_{b, t}
        (\operatorname{logsumexp}_v z_{btv} - z_{b t y_{bt}})

    :math:`E` (V, d) the embedding, :math:`PE` the sinusoidal table
    (``add_positional_encoding``), :math:`\operatorname{Enc}` ``transformer_encoder_layer``
    (post-norm, no dropout, ``num_heads`` heads, position i attending to positions <= i),
    :math:`W_o = E` when the head is tied (``params`` without a head weight) else its own.
    Backward (``lm_loss_backward``): :math:`\partial z = g(\operatorname{softmax}(z) -
    \text{onehot}(y)) / (BL)`, ``linear_backward``, each encoder layer's backward from the
    top, the positional encoding's identity, ``embedding_backward``; a tied :math:`E` gets the
    sum of its two uses' gradients.
    """
    tok = v.int_array(tokens, "tokens", ndim=2)
    if tok.shape[1] < 2 or tok.shape[0] < 1:
        raise ValueError(f"tokens must be (B, L + 1) with B >= 1 and L >= 1 (inputs and their "
                         f"next tokens), got shape {tok.shape}")
    if not isinstance(params, (list, tuple)) or not params:
        raise ValueError(f"params must be the LM's list of arrays, got {type(params).__name__}")
    e0 = v.float_array(params[0], "params[0] (embedding.weight)", ndim=2)
    want, n_layers, untied = _lm_shapes(params, e0.shape)
    ps = check_params(params, want, e0.dtype, "this LM", lm_param_names(len(params)))
    v.labels(tok, "tokens", e0.shape[0])
    inp, tgt = tok[:, :-1], tok[:, 1:]
    batch, length = inp.shape
    h, c_emb = embedding(inp, ps[0])
    h, c_pe = add_positional_encoding(h, batch_first=True)
    mask = causal_mask(length)
    enc = []
    for i in range(n_layers):
        h, c = transformer_encoder_layer(h, *ps[1 + 12 * i:13 + 12 * i], src_mask=mask,
                                         num_heads=num_heads, activation=activation,
                                         layer_norm_eps=layer_norm_eps, batch_first=True)
        enc.append(c)
    w_out = ps[-2] if untied else ps[0]
    z, c_head = linear(h, w_out, ps[-1])
    loss, c_ce = cross_entropy(z.reshape(batch * length, -1), np.ascontiguousarray(tgt).reshape(-1))
    return np.asarray(loss).copy(), LMCtx(c_emb, c_pe, enc, c_head, c_ce, untied, e0.dtype)


def lm_loss_backward(ctx: LMCtx, grad_out) -> tuple[tuple, list[np.ndarray]]:
    r"""``((None,), d_params)``: :math:`\partial z = g(\operatorname{softmax}(z) -
    \text{onehot}(y))/(BL)`, then ``linear_backward`` (head), each
    ``transformer_encoder_layer_backward`` from the top, the positional encoding's identity and
    ``embedding_backward``; a tied embedding's gradient is the sum of the lookup's and the
    head's (tokens are not differentiable)."""
    v.ctx_of(ctx, LMCtx, "lm_loss")
    g = v.float_array(grad_out, "grad_out", ndim=0, dtype=ctx.dtype)
    dz, _ = cross_entropy_backward(ctx.ce, g)  # tokens: no gradient (None)
    dh, dw_out, db_out = linear_backward(ctx.head, dz.reshape(ctx.head.x_shape[:-1] + (-1,)))
    layer_grads = []
    for c in reversed(ctx.layers):
        dh, *dps = transformer_encoder_layer_backward(c, dh)
        layer_grads = list(dps) + layer_grads
    (dh,) = add_positional_encoding_backward(ctx.pe, dh)
    (d_emb,) = embedding_backward(ctx.emb, dh)
    if ctx.untied:
        return (None,), [d_emb, *layer_grads, dw_out, db_out]
    return (None,), [d_emb + dw_out, *layer_grads, db_out]


def _lm_model_loss(tokens, config, params):
    if not isinstance(config, LMConfig):
        raise TypeError(f"the LM's inputs must be (tokens, LMConfig(num_heads, ...)), got "
                        f"{type(config).__name__} for the config")
    return lm_loss(tokens, params, **config._asdict())


def _lm_model_backward(ctx, grad_out):
    (_,), grads = lm_loss_backward(ctx, grad_out)
    return (None, None), grads


# name -> (loss(*inputs, params), loss_backward(ctx, g), parameter names for n parameters),
# read by ``models.train_step``.
MODELS: dict = {
    "gan_discriminator": (gan_discriminator_loss, gan_discriminator_loss_backward,
                          disc_param_names),
    "gan_generator": (gan_generator_loss, gan_generator_loss_backward, gen_param_names),
    "lm": (_lm_model_loss, _lm_model_backward, lm_param_names),
}
