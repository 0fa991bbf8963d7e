"""Attention: scaled dot-product attention, multi-head attention, the transformer encoder
layer, and the sinusoidal positional encoding, forward and hand-written backward.

Modules: ``sdpa`` (scaled dot-product attention), ``mha`` (multi-head attention: self-attention
with the packed projection, and every option of ``nn.MultiheadAttention``), ``encoder`` (the
encoder layer), ``positional`` (the sinusoidal encoding), and ``_core`` (the attention kernels
and dense helpers they share). Every public name is importable from ``reference.attention``.

Conventions follow PyTorch (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``,
``nn.TransformerEncoderLayer``): the same shapes, parameter layout and mask semantics, so a
module's parameters can be passed in as they are::

    out, ctx = scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False)
    dq, dk, dv, d_mask = scaled_dot_product_attention_backward(ctx, d_out)

Masks: for ``scaled_dot_product_attention`` a bool mask is True where a query may attend (as
torch's); for ``nn.MultiheadAttention``-style masks (``key_padding_mask``, ``attn_mask``) a bool
mask is True where attention is *forbidden* (as torch's). Float masks are added to the scores.
A query row that may attend to nothing gets all-zero weights and a zero output (torch's
``scaled_dot_product_attention`` convention; ``nn.MultiheadAttention`` with ``need_weights=True``
returns NaN there instead, with ``need_weights=False`` zeros: torch disagrees with itself, and
zeros are what its fused path and its training path give). Dropout takes explicit keep-masks
(bool, True = keep; kept values scaled by ``1/(1-p)``), drawn by the caller; the attention
weights multi-head attention returns are those after dropout, as torch's module returns them.
Where ``add_bias_kv``/``add_zero_attn`` append keys, the masks are given for the key's own
length and those keys are always allowed (torch pads both masks with 0).

Implementation: per (batch, head) the two products ``Q K^T`` and ``P V`` go through BLAS on one
thread (``reference/_blas.py``) in the input's dtype, as torch's do; softmax and the
activations are float64 per element (row sums accumulate in float64) and rounded once; layer
norm is ``reference.norm``'s row kernel. The self-attention projections are one matrix product
over all batch rows and positions (three, one per input, with separate query, key, value).

Contexts: each forward returns a context of its own type (``SDPACtx``, ``MHAPublicCtx``,
``MHAQKVCtx``, ``EncoderCtx``, ``PECtx``); each backward refuses any other (a TypeError
naming ``ctx``) and a ``grad_out`` without the forward output's shape and dtype. The contexts
keep private copies of the caller's arrays backward reads (query/key/value, x, the weights,
the dropout masks), so editing them in place between forward and backward does not change the
gradients; the copies are a few passes over the inputs beside the O(L^2) attention and the
projections (not measured separately).
"""

from reference.attention.encoder import (
    ENCODER_DROPOUTS,
    ENCODER_PARAMETERS,
    EncoderCtx,
    transformer_encoder_layer,
    transformer_encoder_layer_backward,
)
from reference.attention.mha import (
    MHAGradients,
    MHAPublicCtx,
    MHAQKVCtx,
    multi_head_attention,
    multi_head_attention_backward,
    multi_head_attention_qkv,
    multi_head_attention_qkv_backward,
)
from reference.attention.positional import (
    PECtx,
    add_positional_encoding,
    add_positional_encoding_backward,
    sinusoidal_positional_encoding,
)
from reference.attention.sdpa import (
    SDPACtx,
    scaled_dot_product_attention,
    scaled_dot_product_attention_backward,
)

__all__ = [
    "scaled_dot_product_attention", "scaled_dot_product_attention_backward",
    "multi_head_attention", "multi_head_attention_backward",
    "multi_head_attention_qkv", "multi_head_attention_qkv_backward", "MHAGradients",
    "transformer_encoder_layer", "transformer_encoder_layer_backward",
    "ENCODER_PARAMETERS", "ENCODER_DROPOUTS", "sinusoidal_positional_encoding",
    "add_positional_encoding", "add_positional_encoding_backward",
    "SDPACtx", "MHAPublicCtx", "MHAQKVCtx", "EncoderCtx", "PECtx",
]
