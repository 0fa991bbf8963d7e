"""The recurrent family's own tests, beside the generic checks of its specs.

- **Dropout is torch's dropout**: the catalog's twin applies the case's keep-masks layer by
  layer (torch draws its masks itself). Here torch's own multi-layer module runs in training
  mode with dropout, and the masks it drew are recovered by replaying its generator: torch's
  CPU RNN stack calls ``dropout`` on each layer's output but the last, which draws
  ``empty_like(output).bernoulli_(1 - p)`` in that order (time-major: a batch-first input is
  transposed before the stack; packed: over the packed data). The reference given those masks
  must give torch's outputs, states and, through the layered twin's autograd, gradients.
- **Weights for bias=False / proj_size are counted**: the catalog's calling convention reads
  the weights' count from the parameters, so a wrong count can only be tried directly.
- **The LSTM's two-thread steps**: a lone LSTM direction without a projection shares each
  step between two threads once ``hidden * batch >= R.HALVES_MIN`` (2048), beyond the
  catalog's hypothesis cases; those cases go through that path here (the threshold lowered),
  and so does the benchmarks' medium size, against torch with the catalog's tolerances.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from reference import rnn as R
from suites.catalog import get
from suites.catalog.spec import DEFAULT_TOL, FLOAT32, FLOAT64
from suites.catalog.strategies import seeds
from suites.correctness import checks
from suites.recording import compare

FAMILY = "sequence"
_MODULES = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
_FORWARD = {"rnn": R.rnn, "gru": R.gru, "lstm": R.lstm}


def _torch_masks(out, packed, layers, p, dtype, batch_first, steps):
    """The keep-masks torch drew, replayed from its generator, in ``out``'s layout."""
    masks = []
    for _ in range(layers - 1):
        if packed is not None:
            noise = torch.empty(packed.data.shape, dtype=dtype).bernoulli_(1 - p)
            noise, _ = pad_packed_sequence(
                PackedSequence(noise, packed.batch_sizes, packed.sorted_indices,
                               packed.unsorted_indices),
                batch_first=batch_first, total_length=steps)
        else:
            tm = out.transpose(0, 1).shape if batch_first else out.shape
            noise = torch.empty(tm, dtype=dtype).bernoulli_(1 - p)
            noise = noise.transpose(0, 1) if batch_first else noise
        masks.append(noise.numpy() != 0)
    return np.stack(masks)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("dtype", [FLOAT32, FLOAT64], ids=str)
@pytest.mark.parametrize(("packed", "batch_first"), [(False, False), (False, True),
                                                     (True, False), (True, True)])
def test_dropout_is_torchs_own(cell, dtype, packed, batch_first, record):
    record.bind(cell, FAMILY, "dropout = torch's module in training", dtype, "cpu")
    tdt = torch.float32 if dtype == FLOAT32 else torch.float64
    steps, batch, feat, hidden, layers, p = 5, 3, 4, 6, 3, 0.4
    kw = dict(proj_size=2) if cell == "lstm" else {}
    torch.manual_seed(1)
    module = _MODULES[cell](feat, hidden, num_layers=layers, bidirectional=True, dropout=p,
                            batch_first=batch_first, dtype=tdt, **kw).train()
    x = torch.randn((batch, steps, feat) if batch_first else (steps, batch, feat), dtype=tdt,
                    requires_grad=True)
    lengths = np.array([5, 2, 3]) if packed else None
    torch.manual_seed(7)
    inp = (pack_padded_sequence(x, torch.from_numpy(lengths), batch_first=batch_first,
                                enforce_sorted=False) if packed else x)
    out, hx = module(inp)
    pk = out if packed else None
    if packed:
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=steps)
    theirs = (out, *hx) if cell == "lstm" else (out, hx)
    torch.manual_seed(7)
    masks = _torch_masks(out, pk, layers, p, tdt, batch_first, steps)
    weights = [w.detach().numpy() for w in module.parameters()]
    states = (None, None) if cell == "lstm" else (None,)
    mine, ctx = _FORWARD[cell](x.detach().numpy(), *states, weights, num_layers=layers,
                             bidirectional=True, batch_first=batch_first, dropout=p,
                             dropout_mask=masks, lengths=lengths, **kw)
    record.examples += 1
    tol = DEFAULT_TOL[dtype]
    for i, (m, t) in enumerate(zip(mine, theirs, strict=True)):
        compare(m, t.detach().numpy(), tol.rtol, tol.atol, record=record,
                label=f"{cell} output {i} with dropout, packed={packed}, "
                      f"batch_first={batch_first}")
    # backward: the same random upstream gradients through torch's module and the reference
    rng = np.random.default_rng(3)
    ups = [np.asarray(rng.standard_normal(m.shape), dtype) for m in mine]
    leaves = [x, *module.parameters()]
    got = torch.autograd.grad(theirs, leaves, [torch.from_numpy(u) for u in ups])
    back = {"rnn": R.rnn_backward, "gru": R.gru_backward, "lstm": R.lstm_backward}[cell]
    grads = back(ctx, tuple(ups))
    grads = [grads[0], *grads[1 + len(states):]]
    # float32 gradients sum over steps and layers: the family's T-proportional tolerance
    # (suites/catalog/rnn.py, _tol) with T = 5 steps
    gtol = DEFAULT_TOL[dtype] if dtype == FLOAT64 else type(tol)(tol.rtol * 5 / 4,
                                                                 tol.atol * 5 / 4)
    for name, m, t in zip(["x", *R.weight_names(layers, True, True, kw.get("proj_size", 0))],
                          grads, got, strict=True):
        compare(m, t.numpy(), gtol.rtol, gtol.atol, record=record,
                label=f"{cell} gradient of {name} with dropout, packed={packed}, "
                      f"batch_first={batch_first}")


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_weights_counted_for_the_options(cell):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 4))
    g = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    with_bias = [rng.standard_normal(s) for s in ((g * 5, 4), (g * 5, 5), (g * 5,), (g * 5,))]
    states = (None, None) if cell == "lstm" else (None,)
    with pytest.raises(ValueError, match=r"weights must hold 2 \* num_layers.*bias=False"):
        _FORWARD[cell](x, *states, with_bias, bias=False)
    with pytest.raises(ValueError, match=r"weights must hold 4 \* num_layers.*bias=True"):
        _FORWARD[cell](x, *states, with_bias[:2])
    if cell == "lstm":
        with pytest.raises(ValueError, match=r"weights must hold 5 \* num_layers.*proj_size=2"):
            R.lstm(x, None, None, with_bias, proj_size=2)
    assert R.weight_names(2, True, False, 3) == [
        f"{k}_l{layer}{s}" for layer in range(2) for s in ("", "_reverse")
        for k in ("weight_ih", "weight_hh", "weight_hr")]


def _variants(a):
    """The battery's unusual layouts of one array (each holds a's values)."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    ro = a.copy()
    ro.flags.writeable = False
    out = {"strided": big[..., ::2], "reversed": np.ascontiguousarray(a[::-1])[::-1],
           "read-only": ro, "Fortran": np.asfortranarray(a)}
    if a.dtype.itemsize > 1:
        out["big-endian"] = a.astype(a.dtype.newbyteorder(">"))
    if a.dtype.kind == "i":
        out["int32"] = a.astype(np.int32)
    return out


def test_lengths_and_masks_in_any_layout_and_kept_private():
    """lengths and dropout_mask are parameters of the catalog's cases, so the battery's layout
    and mutation probes do not reach them: the same probes here. Every layout gives the
    C-contiguous call's answer bit for bit; editing them between forward and backward does not
    change the gradients."""
    rng = np.random.default_rng(5)
    steps, batch, feat, hidden = 4, 3, 2, 5
    x = rng.standard_normal((steps, batch, feat))
    weights = [rng.standard_normal(w.shape) * 0.4
               for w in torch.nn.LSTM(feat, hidden, num_layers=2, bidirectional=True,
                                      proj_size=2).parameters()]
    lengths = np.array([4, 1, 3])
    mask = rng.random((1, steps, batch, 4)) > 0.3
    kw = dict(num_layers=2, bidirectional=True, proj_size=2, dropout=0.3)
    ups = tuple(rng.standard_normal(s) for s in ((steps, batch, 4), (4, batch, 2),
                                                 (4, batch, hidden)))

    def run(lens, keep, edit=False):
        out, ctx = R.lstm(x, None, None, weights, lengths=lens, dropout_mask=keep, **kw)
        if edit:
            lens[...] = 1
            keep[...] = False
        return out, R.lstm_backward(ctx, ups)

    want = run(lengths.copy(), mask.copy())
    for arg, base in (("lengths", lengths), ("dropout_mask", mask)):
        for name, variant in _variants(base).items():
            got = run(variant if arg == "lengths" else lengths,
                      variant if arg == "dropout_mask" else mask)
            for i, (a, b) in enumerate(zip(want[0] + want[1][:1] + want[1][3:],
                                           got[0] + got[1][:1] + got[1][3:], strict=True)):
                assert np.array_equal(a, b), f"{arg} {name}: result {i} differs"
    edited = run(lengths.copy(), mask.copy(), edit=True)
    for i, (a, b) in enumerate(zip(want[1][:1] + want[1][3:], edited[1][:1] + edited[1][3:],
                                   strict=True)):
        assert np.array_equal(a, b), f"editing lengths/mask after forward changed gradient {i}"


@pytest.mark.parametrize("dtype", [FLOAT32, FLOAT64], ids=str)
@given(data=st.data())
def test_lstm_in_two_thread_steps(dtype, device, data):
    spec = get("lstm")
    case = data.draw(spec.cases(dtype), label="case")
    rng = data.draw(seeds(), label="upstream gradient seed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(R, "HALVES_MIN", 0)
        checks.check_forward(spec, case, device)
        checks.check_gradient(spec, case, rng, device)


@pytest.mark.parametrize("dtype", [FLOAT32, FLOAT64], ids=str)
def test_lstm_medium_in_two_thread_steps(dtype, device):
    spec = get("lstm")
    case = spec.sizes["medium"](dtype)
    sh_hidden = case.inputs["x"].shape[-1]
    assert sh_hidden * case.inputs["x"].shape[1] >= R.HALVES_MIN  # the path is taken as is
    checks.check_forward(spec, case, device)
    checks.check_gradient(spec, case, np.random.default_rng(0), device)
