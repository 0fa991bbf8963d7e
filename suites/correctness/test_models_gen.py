"""Trajectories of the LM and the GAN beside torch (the generic checks cover one step of the
LM and of both GAN halves): the LM trained on a small shipped text with Adam and with
SGD-momentum, and 20 alternating GAN steps with both.

The LM's torch side is the spec's twin module (``TorchLM``: ``nn.Embedding``, causal
``nn.TransformerEncoderLayer``s, a tied head) with the reference's initial weights copied in,
trained by ``torch.optim`` in the usual loop; the reference trains with
``models.train_step("lm", ...)``. Both see the same batches in the same order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reference import models as M
from reference import models_gen as G
from suites.catalog.models import _TORCH_OPT
from suites.catalog.models_gen import TorchLM, _d_loss_torch, _g_loss_torch
from suites.catalog.spec import DEFAULT_TOL, FLOAT32
from suites.recording import compare

FAMILY = "models"
CORPUS = Path(__file__).resolve().parents[1] / "data" / "tiny_corpus.txt"
STEPS, BATCH, LENGTH = 20, 8, 24
D_MODEL, HEADS, FF = 16, 2, 32


def _torch_lm(params, vocab, dtype):
    mod = TorchLM(vocab, D_MODEL, HEADS, FF, 1, True, "relu", 1e-5, device="cpu").to(dtype)
    with torch.no_grad():
        for p, a in zip(mod.parameters(), params, strict=True):
            p.copy_(torch.from_numpy(np.ascontiguousarray(a)).to(dtype))
    return mod


def _torch_curve(params, vocab, batches, dtype, optimizer="adam", hyper=None):
    mod = _torch_lm(params, vocab, dtype)
    opt = _TORCH_OPT[optimizer](mod.parameters(), **(hyper or dict(lr=1e-2)))
    out = []
    for tok in batches:
        opt.zero_grad()
        loss = mod(torch.from_numpy(tok))
        loss.backward()
        opt.step()
        out.append(loss.item())
    return np.array(out)


# Tolerance of the loss curves, measured rather than bounded (the rule of
# ``suites/catalog/_attention_tools.py``'s ``_oracle_tol``): the same torch training run in float64
# is the exact trajectory to ~1e-12, so e_t = |torch32_t - torch64_t| is torch's own float32
# error at step t, compounded through the steps before it. The reference rounds the same
# operations in float32 in other orders, so |ref_t - torch32_t| <= |ref_t - exact_t| + e_t, and
# we allow the reference 3x torch's error: DEFAULT_TOL + 4 max_{s <= t} e_s (the running
# maximum, since a step's error can cancel by chance where the previous ones did not).


@pytest.mark.parametrize(("optimizer", "hyper", "label"), [
    ("adam", dict(lr=1e-2), "Adam"), ("sgd", dict(lr=0.3, momentum=0.9), "SGD-momentum")],
    ids=["adam", "sgd-momentum"])
def test_lm_trains_on_tiny_corpus(optimizer, hyper, label, record):
    record.bind("lm_train_step", FAMILY, f"tiny corpus ({STEPS} {label} steps)", FLOAT32, "cpu")
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
    state = M.init_state(optimizer, params, **hyper)
    ref = []
    for t, tok in enumerate(batches, 1):
        (loss, params, state), _ = M.train_step("lm", (tok, config), params, state, t,
                                                 optimizer=optimizer, **hyper)
        ref.append(float(loss))
    ref = np.array(ref)
    t32 = _torch_curve(params0, vocab, batches, torch.float32, optimizer, hyper)
    t64 = _torch_curve(params0, vocab, batches, torch.float64, optimizer, hyper)
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


# ---------------------------------------------------------------------------------------------
# the GAN: 20 alternating discriminator and generator steps, explicit noise, float32
#
# Both halves of each step against ``torch.optim`` stepping the twin's tensors (the spec's
# ``nn.Sequential`` MLPs run by ``functional_call``): the discriminator on a real batch and
# G(z).detach(), then the generator through D with fresh noise. Tolerance: the LM's measured
# rule above, per curve (torch's own float32 error against its float64 run, times 4).

GAN_STEPS, GAN_BATCH, NOISE, DATA, HIDDEN = 20, 16, 4, 2, 16


def _gan_data(rng):
    """Real batches from a 2-D Gaussian at (2, -1) with deviation 0.5, and the two noise draws
    of each step (discriminator's, generator's)."""
    real = [(np.array([2.0, -1.0]) + 0.5 * rng.standard_normal((GAN_BATCH, DATA))
             ).astype(np.float32) for _ in range(GAN_STEPS)]
    z_d = [rng.standard_normal((GAN_BATCH, NOISE)).astype(np.float32) for _ in range(GAN_STEPS)]
    z_g = [rng.standard_normal((GAN_BATCH, NOISE)).astype(np.float32) for _ in range(GAN_STEPS)]
    return real, z_d, z_g


def _gan_reference(gp, dp, data, optimizer, hyper):
    s_g = M.init_state(optimizer, gp, **hyper)
    s_d = M.init_state(optimizer, dp, **hyper)
    ld, lg = [], []
    for t, (x, zd, zg) in enumerate(zip(*data, strict=True), 1):
        (loss_d, dp, s_d), _ = M.train_step("gan_discriminator", (x, zd, gp), dp, s_d, t,
                                            optimizer=optimizer, **hyper)
        (loss_g, gp, s_g), _ = M.train_step("gan_generator", (zg, dp), gp, s_g, t,
                                            optimizer=optimizer, **hyper)
        ld.append(float(loss_d))
        lg.append(float(loss_g))
    return np.array(ld), np.array(lg)


def _gan_torch(gp, dp, data, optimizer, hyper, dtype):
    # copies: torch.from_numpy shares the array's memory, and the optimizer steps in place
    gp = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in gp]
    dp = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in dp]
    opt_g, opt_d = _TORCH_OPT[optimizer](gp, **hyper), _TORCH_OPT[optimizer](dp, **hyper)
    ld, lg = [], []
    for x, zd, zg in zip(*data, strict=True):
        x, zd, zg = (torch.from_numpy(a).to(dtype) for a in (x, zd, zg))
        opt_d.zero_grad()
        loss_d = _d_loss_torch(x, zd, gp, dp)  # G(z) under no_grad: detached
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        opt_d.zero_grad()  # the generator's loss also fills D's gradients; D is not stepped
        loss_g = _g_loss_torch(zg, dp, gp)
        loss_g.backward()
        opt_g.step()
        ld.append(loss_d.item())
        lg.append(loss_g.item())
    return np.array(ld), np.array(lg)


@pytest.mark.parametrize(("optimizer", "hyper"), [
    ("sgd", dict(lr=0.05, momentum=0.9)), ("adam", dict(lr=2e-3, betas=(0.5, 0.999)))],
    ids=["sgd-momentum", "adam"])
def test_gan_trajectory(optimizer, hyper, record):
    record.bind("gan_discriminator_step", FAMILY, f"trajectory {optimizer} (alternating)",
                FLOAT32, "cpu")
    rng = np.random.default_rng(3)
    gp, dp = G.gan_init(rng, NOISE, DATA, (HIDDEN,), (HIDDEN,), np.float32)
    data = _gan_data(rng)
    ref_d, ref_g = _gan_reference(gp, dp, data, optimizer, hyper)
    t32_d, t32_g = _gan_torch(gp, dp, data, optimizer, hyper, torch.float32)
    t64_d, t64_g = _gan_torch(gp, dp, data, optimizer, hyper, torch.float64)
    record.examples += 2 * GAN_STEPS
    base = DEFAULT_TOL[FLOAT32]
    for half, ref, t32, t64 in (("D", ref_d, t32_d, t64_d), ("G", ref_g, t32_g, t64_g)):
        allowed = base.atol + 4 * np.maximum.accumulate(np.abs(t32 - t64))
        record.figures[f"{half} loss curve reference"] = " ".join(f"{x:.4f}" for x in ref)
        record.figures[f"{half} loss curve torch"] = " ".join(f"{x:.4f}" for x in t32)
        record.figures[f"{half} worst |diff| / allowed"] = float(
            np.max(np.abs(ref - t32) / (allowed + base.rtol * np.abs(t32))))
        for t in range(GAN_STEPS):
            compare(np.asarray(ref[t]), np.asarray(t32[t]), base.rtol, float(allowed[t]),
                    label=f"{half} loss at step {t + 1} ({optimizer})", record=record)
    # The game moves: the discriminator's loss leaves its start (2 log 2 for an undecided D)
    # by more than the tolerance, so the comparison is not of two flat curves.
    assert np.ptp(ref_d) > 100 * base.atol, f"the D loss stayed flat: {ref_d}"
