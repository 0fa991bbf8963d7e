"""The transformer LM trained on a small shipped text, beside torch (the generic checks cover
one step of it and of both GAN halves).

The torch side is the spec's twin module (``TorchLM``: ``nn.Embedding``, causal
``nn.TransformerEncoderLayer``s, a tied head) with the reference's initial weights copied in,
trained by ``torch.optim.Adam`` in the usual loop; the reference trains with
``models.train_step("lm", ...)``. Both see the same batches in the same order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from reference import models as M
from reference import models_gen as G
from suites.catalog.models_gen import TorchLM
from suites.catalog.spec import DEFAULT_TOL, FLOAT32
from suites.recording import compare

FAMILY = "models"
CORPUS = Path(__file__).resolve().parents[1] / "data" / "tiny_corpus.txt"
STEPS, BATCH, LENGTH = 20, 8, 24
D_MODEL, HEADS, FF = 16, 2, 32


def _torch_lm(params, vocab, dtype):
    mod = TorchLM(vocab, D_MODEL, HEADS, FF, 1, True, "relu", 1e-5, device="cpu").to(dtype)
    with torch.no_grad():
        for (name, p), a in zip(mod.named_parameters(), params, strict=True):
            p.copy_(torch.from_numpy(np.ascontiguousarray(a)).to(dtype))
    return mod


def _torch_curve(params, vocab, batches, dtype):
    mod = _torch_lm(params, vocab, dtype)
    opt = torch.optim.Adam(mod.parameters(), lr=1e-2)
    out = []
    for tok in batches:
        opt.zero_grad()
        loss = mod(torch.from_numpy(tok))
        loss.backward()
        opt.step()
        out.append(loss.item())
    return np.array(out)


# Tolerance of the loss curves, measured rather than bounded (the rule of
# ``suites/catalog/attention.py``'s ``_oracle_tol``): the same torch training run in float64
# is the exact trajectory to ~1e-12, so e_t = |torch32_t - torch64_t| is torch's own float32
# error at step t, compounded through the steps before it. The reference rounds the same
# operations in float32 in other orders, so |ref_t - torch32_t| <= |ref_t - exact_t| + e_t, and
# we allow the reference 3x torch's error: DEFAULT_TOL + 4 max_{s <= t} e_s (the running
# maximum, since a step's error can cancel by chance where the previous ones did not).


def test_lm_trains_on_tiny_corpus(record):
    record.bind("lm_train_step", FAMILY, "tiny corpus (20 Adam steps)", FLOAT32, "cpu")
    text = CORPUS.read_text(encoding="ascii")
    alphabet = sorted(set(text))
    ids = np.array([alphabet.index(c) for c in text], np.int64)
    vocab = len(alphabet)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, ids.size - LENGTH - 1, (STEPS, BATCH))
    batches = [np.stack([ids[s:s + LENGTH + 1] for s in row]) for row in starts]
    params0 = G.lm_init(rng, vocab, D_MODEL, 1, FF, tied=True, dtype=np.float32)
    params = params0  # train_step returns new arrays and mutates none
    config = G.LMConfig(num_heads=HEADS)
    state = M.init_state("adam", params)
    ref = []
    for t, tok in enumerate(batches, 1):
        (loss, params, state), _ = M.train_step("lm", (tok, config), params, state, t,
                                                 optimizer="adam", lr=1e-2)
        ref.append(float(loss))
    ref = np.array(ref)
    t32 = _torch_curve(params0, vocab, batches, torch.float32)
    t64 = _torch_curve(params0, vocab, batches, torch.float64)
    record.examples += STEPS
    err = np.maximum.accumulate(np.abs(t32 - t64))
    base = DEFAULT_TOL[FLOAT32]
    for t in range(STEPS):
        compare(np.asarray(ref[t]), np.asarray(t32[t]), base.rtol, base.atol + 4 * err[t],
                label=f"loss at step {t + 1}", record=record)
    record.figures["loss curve reference"] = " ".join(f"{x:.3f}" for x in ref)
    record.figures["loss curve torch"] = " ".join(f"{x:.3f}" for x in t32)
    record.figures["log(vocab)"] = float(np.log(vocab))
    first, last = ref[:3].mean(), ref[-3:].mean()
    record.figures["loss fall (last 3 / first 3)"] = float(last / first)
    # Falling: the mean of the last three steps' losses (on fresh batches each step) at least
    # 15% below that of the first three (measured: ~20%, from log(vocab) ~ 3.6 nats).
    assert last < 0.85 * first, f"the LM's loss did not fall: {first:.3f} -> {last:.3f}"
    assert t32[-3:].mean() < 0.85 * t32[:3].mean(), "torch's loss did not fall either"

