#!/usr/bin/env python3
"""Reference fixtures for q2's Rust tests, computed with PyTorch.

This script is the independent reference the Rust crates are checked against. It writes:

  quant_golden.json       forward values and gradients of every fake quantizer of
                          docs/QUANTIZERS.md (lsq, lsq_plus, pact / DoReFa, n2uq, minmax); each
                          case's `input` is exactly the input of `q2 quant`.
  quant_init.json         the data-driven initialisations of docs/QUANTIZERS.md.
  nn_layers.safetensors   torch.nn Conv→BatchNorm→SiLU blocks (train and eval), a biased 1×1
                          conv, nearest upsampling and 5×5 max pooling, with their gradients.
  nn_optim.json           torch.optim.SGD (Nesterov) and torch.optim.Adam over several parameter
                          groups whose lr / momentum change every step.
  nn_sched.json           YOLOv5 train.py's warm-up + LambdaLR schedule (linear and one_cycle),
                          iteration by iteration.
  nn_ema.json             YOLOv5 ModelEMA updates of a small Conv+BN model.

The quantizer references re-implement the spec with autograd; no gradient formula is written out.
Each quantizer builds two expressions from the same float32 tensors:

  * the forward value, written literally in the spec's operation order, and
  * a gradient surrogate whose autograd derivative is the spec's straight-through gradient:
    "identity plus a detached quantization error" inside the clip range, the clipped expression
    (or a constant) outside, selected with explicit `torch.where` masks so that a value exactly on
    a clip boundary counts as clipped (torch.clamp's own gradient would count it as inside).

`splice(forward, surrogate)` returns the forward value with the surrogate's gradient. Parameters
are float32 leaf tensors; each is broadcast to one float32 copy per element through float64
(`per_element`), so autograd sums its per-element gradient terms in float64 and stores the sum
as float32, as the spec prescribes. Statistics (means, standard deviations) are likewise
accumulated in float64 and rounded to float32 before use.

Run from the repository root:  python tools/make_fixtures.py [--out tests/fixtures]
"""

import argparse
import copy
import json
import math
import os
from collections import OrderedDict

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

F32 = torch.float32
GENERATOR = "tools/make_fixtures.py"
SEED = 0


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------

def f32(v):
    """A float32 tensor (0-dim for a scalar)."""
    return torch.tensor(v, dtype=F32)


def r32(v):
    """A Python float holding the float32 rounding of v."""
    return float(np.float32(v))


def flat(t):
    """Flat list of Python floats (exactly the float32 values) of a tensor."""
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def splice(forward, surrogate):
    """The value of `forward` with the gradient of `surrogate` (straight-through estimator)."""
    return forward.detach() + (surrogate - surrogate.detach())


def per_element(p, n, gs=None):
    """Broadcast a (k,) parameter to (k, n) float32 copies, one per element of a group.

    The broadcast happens in float64, so autograd accumulates the parameter gradient in float64
    and rounds it to float32 once. `gs` is a gradient scale applied to that float64 sum
    (forward value unchanged).
    """
    d = p.double()
    if gs is not None:
        d = d.detach() + (d * gs - (d * gs).detach())
    return d[:, None].expand(-1, n).float()


def mean64(x, dim=1):
    """Mean over `dim` accumulated in float64, rounded to float32 (keepdim)."""
    return x.detach().double().mean(dim=dim, keepdim=True).float()


def spread(n, lo, hi, margin=0.25):
    """n float32 values uniform on [lo, hi] widened by `margin` of its width on both sides."""
    w = hi - lo
    return (lo - margin * w) + (w * (1 + 2 * margin)) * torch.rand(n)


def nextafter(v, direction):
    return float(np.nextafter(np.float32(v), np.float32(direction)))


# ----------------------------------------------------------------------------------------------
# Quantizer references (docs/QUANTIZERS.md). x is a (G, N) float32 leaf, one row per group.
# ----------------------------------------------------------------------------------------------

def lsq_range(bits, signed):
    """(Qn, Qp) of LSQ."""
    return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def lsq_plus_range(bits, signed):
    """(n_lo, p) of LSQ+."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def ref_lsq(x, params, bits, signed):
    """LSQ: parameter s per group; gradient scale gs = 1/sqrt(numel·Qp)."""
    qn, qp = lsq_range(bits, signed)
    n_elem = x.shape[1]
    s = per_element(params["s"], n_elem, gs=1.0 / math.sqrt(n_elem * qp))
    v = x / s
    below, above = v <= -qn, v >= qp
    lo, hi = -float(qn) * s, float(qp) * s
    forward = torch.where(below, lo, torch.where(above, hi, torch.round(v) * s))
    inside = x + (torch.round(v) - v).detach() * s
    surrogate = torch.where(below, lo, torch.where(above, hi, inside))
    return splice(forward, surrogate), surrogate


def ref_lsq_plus(x, params, bits, signed):
    """LSQ+: scale s and offset beta per group, both with gs = 1/sqrt(numel·p)."""
    n_lo, p = lsq_plus_range(bits, signed)
    n_elem = x.shape[1]
    gs = 1.0 / math.sqrt(n_elem * p)
    s = per_element(params["s"], n_elem, gs=gs)
    beta = per_element(params["beta"], n_elem, gs=gs)
    v = (x - beta) / s
    below, above = v <= n_lo, v >= p
    lo, hi = float(n_lo) * s + beta, float(p) * s + beta
    forward = torch.where(below, lo, torch.where(above, hi, torch.round(v) * s + beta))
    inside = x + (torch.round(v) - v).detach() * s
    surrogate = torch.where(below, lo, torch.where(above, hi, inside))
    return splice(forward, surrogate), surrogate


def ref_pact(x, params, bits):
    """PACT activations: clip to [0, alpha] (Eq. 3 gradient), straight-through rounding."""
    n = 2 ** bits - 1
    alpha = per_element(params["alpha"], x.shape[1])
    sc = alpha / n
    v = x / sc
    below, above = v <= 0, v >= n
    zero = torch.zeros_like(x)
    forward = torch.where(below, zero, torch.where(above, n * sc, torch.round(v) * sc))
    surrogate = torch.where(above, alpha, torch.where(below, zero, x))
    return splice(forward, surrogate), None


def ref_dorefa(w, bits):
    """DoReFa weights rescaled by m = max|tanh w|; m is differentiated (ties split evenly)."""
    n = 2 ** bits - 1
    t = torch.tanh(w)
    m = t.abs().max()  # autograd splits the gradient of a full max evenly among ties
    if m.item() == 0.0:
        return splice(torch.zeros_like(w), w), None
    m = per_element(m.reshape(1), w.shape[1])
    r = t / (2 * m) + 0.5
    q = torch.round(r * n) / n
    forward = m * (2 * q - 1)
    error = ((2 * q - 1) - t / m).detach()  # zero derivative under the STE
    surrogate = t + m * error
    return splice(forward, surrogate), surrogate


def ref_n2uq_unsigned(x, params, bits):
    """N2UQ activation quantizer (LTQ): learned thresholds, gradient of a piecewise-linear ramp."""
    n = 2 ** bits - 1
    n_elem = x.shape[1]
    delta, eps = f32(2.0 / n), f32(1e-3)
    start = per_element(params["start"], n_elem)
    scale1 = per_element(params["scale1"], n_elem)
    scale2 = per_element(params["scale2"], n_elem)
    a = per_element(params["a"], n_elem)  # (n, N): row i holds a_i
    xs = x * scale1
    a_pos = torch.where(a > eps, a, eps)
    levels = [f32(0.0)]
    for _ in range(n):
        levels.append(levels[-1] + delta)  # L_k = L_{k-1} + Δ in float32

    # Forward: k = #{i : x' > T_i}, y = L_k · scale2.
    with torch.no_grad():
        k = torch.zeros(xs.shape, dtype=torch.long)
        thr = start + a_pos[0:1] / 2
        for i in range(n):
            if i > 0:
                thr = thr + (a_pos[i - 1:i] / 2 + a_pos[i:i + 1] / 2)
            k += (xs > thr).long()
        level_k = torch.stack(levels)[k]

    # Backward: in segment i (B_i < x' <= B_{i+1}) the ramp Δ/a_i·(x' − B_i) + L_i;
    # constants at the bottom (x' <= B_0) and the top (x' >= B_n, open interior).
    ramp = torch.zeros_like(xs)
    bound = start  # B_0
    for i in range(n):
        seg = delta / a_pos[i:i + 1] * (xs - bound) + levels[i]
        ramp = torch.where(xs > bound, seg, ramp)
        bound = bound + a_pos[i:i + 1]  # B_{i+1}
    ramp = torch.where(xs >= bound, levels[n].expand_as(xs), ramp)
    y = (level_k + (ramp - ramp.detach())) * scale2
    return y, None


def ref_n2uq_signed(w, bits):
    """N2UQ weights: per-group scale c = ((2^b−1)/2^(b−1))·mean|W| (detached), gradient g/c."""
    n = 2 ** bits - 1
    gamma = (2 ** bits - 1) / 2 ** (bits - 1)  # exact in float32
    c = gamma * mean64(w.abs())
    zero = c == 0
    c = torch.where(zero, torch.ones_like(c), c)  # safe divisor; zero groups are masked below
    wc = torch.clamp(w.detach() / c, -1.0, 1.0)
    h = n / 2
    forward = torch.where(zero, 0.0, c * (torch.round((wc + 1) * h) / h - 1))
    surrogate = torch.where(zero, 0.0 * w, w / c)
    return splice(forward, surrogate), None


def ref_minmax(x, bits, signed):
    """Min–max baseline: detached statistics per group, identity gradient."""
    n = 2 ** bits - 1
    xd = x.detach()
    if signed:
        m = xd.abs().amax(dim=1, keepdim=True)
        zero = m == 0
        m = torch.where(zero, torch.ones_like(m), m)
        r = xd / (2 * m) + 0.5
        q = torch.round(r * n) / n
        forward = torch.where(zero, 0.0, m * (2 * q - 1))
    else:
        lo = xd.amin(dim=1, keepdim=True)
        hi = xd.amax(dim=1, keepdim=True)
        sc = (hi - lo) / n
        zero = sc == 0
        sc = torch.where(zero, torch.ones_like(sc), sc)
        forward = torch.where(zero, xd, torch.round((xd - lo) / sc) * sc + lo)
    return splice(forward, x), None


def quantize(method, x, params, bits, signed):
    """Dispatch to the reference; returns (y, surrogate or None)."""
    if method == "lsq":
        return ref_lsq(x, params, bits, signed)
    if method == "lsq_plus":
        return ref_lsq_plus(x, params, bits, signed)
    if method == "pact":
        return ref_dorefa(x, bits) if signed else ref_pact(x, params, bits)
    if method == "n2uq":
        return ref_n2uq_signed(x, bits) if signed else ref_n2uq_unsigned(x, params, bits)
    if method == "minmax":
        return ref_minmax(x, bits, signed)
    raise ValueError(method)


# ----------------------------------------------------------------------------------------------
# quant_golden.json
# ----------------------------------------------------------------------------------------------

PER_GROUP = {"s", "beta"}  # parameters that become lists when groups > 1


def golden_case(name, method, bits, signed, x, params=None, groups=1):
    """Evaluate one case: forward, then backward of sum(y * grad_out)."""
    params = params or {}
    x = torch.as_tensor(x, dtype=F32).reshape(-1)
    grad_out = torch.randn(x.numel())
    assert x.numel() % groups == 0
    xl = x.reshape(groups, -1).clone().requires_grad_()
    leaves = {k: torch.tensor(np.atleast_1d(np.asarray(v, dtype=np.float32)), dtype=F32)
              .requires_grad_() for k, v in params.items()}
    y, surrogate = quantize(method, xl, leaves, bits, signed)
    if surrogate is not None:  # the surrogate must be the same function (up to rounding)
        tol = 1e-5 * max(1.0, float(y.detach().abs().max()))
        assert torch.allclose(surrogate.detach(), y.detach(), atol=tol), name
    (y * grad_out.reshape(groups, -1)).sum().backward()

    def shaped(k, t):
        vals = flat(t)
        return vals if (k == "a" or (k in PER_GROUP and groups > 1)) else vals[0]

    inp = {"method": method, "bits": bits, "signed": signed, "x": flat(x),
           "params": {k: shaped(k, v) for k, v in leaves.items()}, "grad_out": flat(grad_out)}
    if groups != 1:
        inp["groups"] = groups
    expected = {"y": flat(y), "grad_x": flat(xl.grad),
                "grad_params": {k: shaped(k, v.grad) for k, v in leaves.items()}}
    for arr in (expected["y"], expected["grad_x"]):
        assert all(math.isfinite(v) for v in arr), name
    return {"name": name, "input": inp, "expected": expected}


def with_fill(special, n, lo, hi):
    """Special values first, then random values spanning below, inside and above [lo, hi]."""
    special = torch.tensor(special, dtype=F32)
    assert special.numel() <= n
    return torch.cat([special, spread(n - special.numel(), lo, hi)])


def grid_specials(n_lo, p, s, beta=0.0, ties=6):
    """Exact float32 values for a grid beta + k·s, k ∈ [n_lo, p] (s, beta powers of two):
    both clip boundaries, their float32 neighbours inside, the offset itself, rounding ties
    (k + 0.5)·s + beta, and one value beyond each boundary."""
    lo, hi = n_lo * s + beta, p * s + beta
    ks = np.linspace(n_lo, p - 1, num=min(ties, p - n_lo)).round().astype(int)
    vals = [lo, hi, beta, nextafter(lo, hi), nextafter(hi, lo), lo - s, hi + 1.5 * s]
    vals += [(k + 0.5) * s + beta for k in ks]
    return [float(np.float32(v)) for v in vals]


def lsq_golden_cases():
    cases = []
    sizes = {2: 24, 3: 32, 4: 48, 8: 96}
    for signed in (True, False):
        tag = "s" if signed else "u"
        for bits, n in sizes.items():
            qn, qp = lsq_range(bits, signed)
            s = r32(0.05 + 0.35 * torch.rand(()).item())
            x = spread(n, -qn * s, qp * s)
            cases.append(golden_case(f"lsq_{tag}_b{bits}", "lsq", bits, signed, x, {"s": s}))
    # boundaries, ties, zeros (s a power of two so every special value is exact)
    for bits, signed, s in ((2, True, 0.25), (4, True, 0.25), (3, False, 0.125)):
        qn, qp = lsq_range(bits, signed)
        x = with_fill(grid_specials(-qn, qp, s) + [0.0], 32, -qn * s, qp * s)
        tag = "s" if signed else "u"
        cases.append(golden_case(f"lsq_{tag}_b{bits}_boundaries_ties", "lsq", bits, signed, x,
                                 {"s": s}))
    # per-channel
    for bits, signed, ss, per in ((4, True, [0.25, 0.5, 0.125], 16), (3, False, None, 12)):
        qn, qp = lsq_range(bits, signed)
        if ss is None:
            ss = [r32(0.05 + 0.3 * torch.rand(()).item()) for _ in range(3)]
        chunks = [with_fill(grid_specials(-qn, qp, s, ties=2), per, -qn * s, qp * s)
                  if signed else spread(per, -qn * s, qp * s) for s in ss]
        tag = "s" if signed else "u"
        cases.append(golden_case(f"lsq_{tag}_b{bits}_g3", "lsq", bits, signed, torch.cat(chunks),
                                 {"s": ss}, groups=3))
    return cases


def lsq_plus_golden_cases():
    cases = []
    sizes = {2: 24, 3: 32, 4: 48, 8: 96}
    for signed in (True, False):
        tag = "s" if signed else "u"
        for bits, n in sizes.items():
            n_lo, p = lsq_plus_range(bits, signed)
            s = r32(0.05 + 0.3 * torch.rand(()).item())
            beta = r32(-0.4 + 0.5 * torch.rand(()).item())
            if signed and bits != 3:
                beta = 0.0  # weights keep beta = 0; b3 exercises the generic formula
            x = spread(n, n_lo * s + beta, p * s + beta)
            cases.append(golden_case(f"lsq_plus_{tag}_b{bits}", "lsq_plus", bits, signed, x,
                                     {"s": s, "beta": beta}))
    for bits, signed, s, beta in ((2, False, 0.25, -0.5), (3, True, 0.25, 0.0)):
        n_lo, p = lsq_plus_range(bits, signed)
        x = with_fill(grid_specials(n_lo, p, s, beta) + [0.0], 32, n_lo * s + beta, p * s + beta)
        tag = "s" if signed else "u"
        cases.append(golden_case(f"lsq_plus_{tag}_b{bits}_boundaries_ties", "lsq_plus", bits,
                                 signed, x, {"s": s, "beta": beta}))
    for bits, signed, per in ((4, False, 16), (3, True, 12)):
        n_lo, p = lsq_plus_range(bits, signed)
        ss = [r32(0.05 + 0.3 * torch.rand(()).item()) for _ in range(3)]
        betas = [0.0] * 3 if signed else [r32(-0.3 * torch.rand(()).item()) for _ in range(3)]
        x = torch.cat([spread(per, n_lo * s + b, p * s + b) for s, b in zip(ss, betas)])
        tag = "s" if signed else "u"
        cases.append(golden_case(f"lsq_plus_{tag}_b{bits}_g3", "lsq_plus", bits, signed, x,
                                 {"s": ss, "beta": betas}, groups=3))
    return cases


def pact_golden_cases():
    cases = []
    sizes = {2: 24, 3: 32, 4: 48, 8: 96}
    for bits, n in sizes.items():
        alpha = r32(1.0 + 5.0 * torch.rand(()).item())
        cases.append(golden_case(f"pact_u_b{bits}", "pact", bits, False, spread(n, 0.0, alpha),
                                 {"alpha": alpha}))
    for bits, alpha in ((2, 0.75), (4, 3.75)):  # sc = alpha/n = 0.25 exactly
        n_lvl = 2 ** bits - 1
        x = with_fill(grid_specials(0, n_lvl, 0.25), 32, 0.0, alpha)
        cases.append(golden_case(f"pact_u_b{bits}_boundaries_ties", "pact", bits, False, x,
                                 {"alpha": alpha}))
    # signed: DoReFa weights
    for bits, n in sizes.items():
        cases.append(golden_case(f"dorefa_b{bits}", "pact", bits, True, 0.6 * torch.randn(n)))
    w = 0.4 * torch.randn(30)
    w = torch.clamp(w, -1.0, 1.0)
    w[3], w[17] = 1.25, -1.25  # |tanh| ties between opposite signs
    cases.append(golden_case("dorefa_b3_tie_opposite", "pact", 3, True, w))
    w = torch.clamp(0.4 * torch.randn(24), -0.8, 0.8)
    w[5], w[11] = 0.875, 0.875  # identical maxima
    cases.append(golden_case("dorefa_b4_tie_equal", "pact", 4, True, w))
    cases.append(golden_case("dorefa_b2_all_zero", "pact", 2, True, torch.zeros(24)))
    return cases


def n2uq_bounds(start, a, bits):
    """Forward thresholds T_i and backward bounds B_i in float32, as the spec writes them."""
    n = 2 ** bits - 1
    eps = np.float32(1e-3)
    ap = [np.float32(v) if np.float32(v) > eps else eps for v in a]
    two = np.float32(2)
    t = [np.float32(start) + ap[0] / two]
    for i in range(1, n):
        t.append(t[-1] + (ap[i - 1] / two + ap[i] / two))
    b = [np.float32(start)]
    for i in range(n):
        b.append(b[-1] + ap[i])
    return [float(v) for v in t], [float(v) for v in b]


def n2uq_golden_cases():
    cases = []
    # unsigned (LTQ), random non-uniform intervals
    configs = {  # bits: (N, start, scale1, scale2, entries forced small)
        2: (24, -0.3, 1.3, 0.8, {}),
        3: (32, 0.1, 0.75, 1.6, {4: 5e-4}),
        4: (48, -0.05, 2.1, 1.0, {}),
        8: (96, 0.0, 1.0, 2.5, {7: -0.01, 100: 1e-3, 200: 2e-4}),
    }
    for bits, (n, start, s1, s2, small) in configs.items():
        n_lvl = 2 ** bits - 1
        a = (2.0 / n_lvl) * (0.3 + 1.4 * torch.rand(n_lvl))
        for i, v in small.items():
            a[i] = v
        a = [r32(v) for v in a.tolist()]
        _, b = n2uq_bounds(start, a, bits)
        x = spread(n, b[0] / s1, b[-1] / s1)
        params = {"start": r32(start), "a": a, "scale1": r32(s1), "scale2": r32(s2)}
        cases.append(golden_case(f"n2uq_u_b{bits}", "n2uq", bits, False, x, params))
    for bits, n in ((2, 24), (4, 48)):  # the official initialisation
        n_lvl = 2 ** bits - 1
        params = {"start": 0.0, "a": [r32(2.0 / n_lvl)] * n_lvl, "scale1": 1.0, "scale2": 1.0}
        cases.append(golden_case(f"n2uq_u_b{bits}_official_init", "n2uq", bits, False,
                                 spread(n, 0.0, 2.0), params))
    # x' exactly on every forward threshold T_i and backward bound B_i (scale1 a power of two)
    for bits, start, s1, s2, a in (
        (3, -0.25, 1.0, 1.25, [0.3, 0.1, 0.0005, 0.45, 0.2, 0.35, 0.15]),
        (2, -0.125, 2.0, 0.5, [0.4, 0.7, 0.25]),
    ):
        a = [r32(v) for v in a]
        t, b = n2uq_bounds(start, a, bits)
        special = [v / s1 for v in t + b]
        special += [nextafter(v, math.inf) / s1 for v in (t[0], b[0], b[-1])]
        special += [nextafter(v, -math.inf) / s1 for v in (t[-1], b[-1])]
        x = with_fill(special, 36, b[0] / s1, b[-1] / s1)
        params = {"start": r32(start), "a": a, "scale1": r32(s1), "scale2": r32(s2)}
        cases.append(golden_case(f"n2uq_u_b{bits}_on_thresholds", "n2uq", bits, False, x,
                                 params))
    # signed (weights)
    for bits, n in ((2, 24), (3, 32), (4, 48), (8, 96)):
        cases.append(golden_case(f"n2uq_s_b{bits}", "n2uq", bits, True, 0.4 * torch.randn(n)))
    channel_scale = torch.tensor([0.1, 0.3, 0.6, 1.0]).repeat_interleave(10)
    cases.append(golden_case("n2uq_s_b2_g4", "n2uq", 2, True, torch.randn(40) * channel_scale,
                             groups=4))
    w = 0.3 * torch.randn(48)
    w[24:36] = 0.0  # an all-zero output channel: c = 0
    cases.append(golden_case("n2uq_s_b4_g4_zero_channel", "n2uq", 4, True, w, groups=4))
    return cases


def minmax_golden_cases():
    cases = []
    sizes = {2: 24, 3: 32, 4: 48, 8: 96}
    for bits, n in sizes.items():
        cases.append(golden_case(f"minmax_u_b{bits}", "minmax", bits, False,
                                 -1.0 + 4.0 * torch.rand(n)))
        cases.append(golden_case(f"minmax_s_b{bits}", "minmax", bits, True, torch.randn(n)))
    x = torch.cat([-1.0 + 4.0 * torch.rand(12), 0.5 * torch.rand(12), 2.0 + torch.rand(12)])
    cases.append(golden_case("minmax_u_b4_g3", "minmax", 4, False, x, groups=3))
    x = torch.randn(36)
    x[12:24] = 0.0  # M = 0 in the middle channel
    cases.append(golden_case("minmax_s_b3_g3_zero_channel", "minmax", 3, True, x, groups=3))
    cases.append(golden_case("minmax_u_b3_constant", "minmax", 3, False, torch.full((24,), 0.7)))
    cases.append(golden_case("minmax_s_b4_constant", "minmax", 4, True, torch.full((24,), -0.3)))
    cases.append(golden_case("minmax_s_b2_all_zero", "minmax", 2, True, torch.zeros(24)))
    # lo = -1, hi = 2.75, sc = 3.75/15 = 0.25: exact rounding ties (k + 0.5)·0.25 − 1
    ties = [-1.0, 2.75] + [-1.0 + (k + 0.5) * 0.25 for k in range(0, 15, 2)]
    x = torch.cat([torch.tensor(ties), -1.0 + 3.75 * torch.rand(22)])
    cases.append(golden_case("minmax_u_b4_ties", "minmax", 4, False, x))
    return cases


def make_quant_golden(out):
    torch.manual_seed(SEED)
    cases = (lsq_golden_cases() + lsq_plus_golden_cases() + pact_golden_cases()
             + n2uq_golden_cases() + minmax_golden_cases())
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names))
    head = json.dumps({"generator": GENERATOR, "torch": torch.__version__})[:-1]
    body = ",\n".join(json.dumps(c, separators=(",", ":")) for c in cases)
    return write_text(out, "quant_golden.json", f'{head}, "cases": [\n{body}\n]}}\n',
                      f"{len(cases)} cases")


# ----------------------------------------------------------------------------------------------
# quant_init.json
# ----------------------------------------------------------------------------------------------

def init_lsq(x, bits, signed):
    _, qp = lsq_range(bits, signed)
    s = (2 * mean64(x.abs())) / torch.sqrt(f32(qp))
    return {"s": flat(torch.maximum(s, f32(1e-8)))}


def init_lsq_plus(x, bits, signed):
    n_lo, p = lsq_plus_range(bits, signed)
    if signed:
        mu = mean64(x)
        sigma = x.double().std(dim=1, unbiased=True, keepdim=True).float()
        s = torch.maximum((mu - 3 * sigma).abs(), (mu + 3 * sigma).abs()) / 2 ** (bits - 1)
        beta = torch.zeros_like(s)
    else:
        lo = x.amin(dim=1, keepdim=True)
        hi = x.amax(dim=1, keepdim=True)
        s = (hi - lo) / (p - n_lo)
        beta = lo - n_lo * s
    return {"s": flat(s), "beta": flat(beta)}


def init_n2uq(x, bits):
    n = 2 ** bits - 1
    mx = x.max()
    return {"start": 0.0, "a": [r32(2.0 / n)] * n,
            "scale1": float(f32(2.0) / mx), "scale2": float(mx / 2)}


def make_quant_init(out):
    torch.manual_seed(SEED)
    silu = nn.SiLU()
    specs = [  # (name, method, bits, signed, groups, x)
        ("lsq_s_b4", "lsq", 4, True, 1, 0.3 * torch.randn(64)),
        ("lsq_u_b3", "lsq", 3, False, 1, silu(2 * torch.randn(48))),
        ("lsq_s_b2_g3", "lsq", 2, True, 3,
         torch.randn(48) * torch.tensor([0.05, 0.2, 0.8]).repeat_interleave(16)),
        ("lsq_u_b8_g2", "lsq", 8, False, 2, silu(3 * torch.randn(40))),
        ("lsq_s_b3_g2_zero_channel", "lsq", 3, True, 2,
         torch.cat([0.2 * torch.randn(20), torch.zeros(20)])),
        ("lsq_plus_s_b4", "lsq_plus", 4, True, 1, 0.05 + 0.3 * torch.randn(64)),
        ("lsq_plus_s_b2_g3", "lsq_plus", 2, True, 3,
         torch.randn(48) * torch.tensor([0.05, 0.2, 0.8]).repeat_interleave(16)),
        ("lsq_plus_u_b4", "lsq_plus", 4, False, 1, silu(2 * torch.randn(64))),
        ("lsq_plus_u_b3_g3", "lsq_plus", 3, False, 3, silu(2 * torch.randn(48))),
        ("lsq_plus_u_b8", "lsq_plus", 8, False, 1, silu(4 * torch.randn(48))),
        ("n2uq_u_b2", "n2uq", 2, False, 1, silu(2 * torch.randn(48))),
        ("n2uq_u_b4", "n2uq", 4, False, 1, silu(3 * torch.randn(64))),
        ("n2uq_u_b8", "n2uq", 8, False, 1, silu(torch.randn(48))),
    ]
    cases = []
    for name, method, bits, signed, groups, x in specs:
        x = x.detach().to(F32)
        xg = x.reshape(groups, -1)
        if method == "lsq":
            expected = init_lsq(xg, bits, signed)
        elif method == "lsq_plus":
            expected = init_lsq_plus(xg, bits, signed)
        else:
            expected = init_n2uq(x, bits)
        cases.append({"name": name, "method": method, "bits": bits, "signed": signed,
                      "groups": groups, "x": flat(x), "expected": expected})
    body = ",\n".join(json.dumps(c, separators=(",", ":")) for c in cases)
    return write_text(out, "quant_init.json", f'{{"cases": [\n{body}\n]}}\n',
                      f"{len(cases)} cases")


# ----------------------------------------------------------------------------------------------
# nn_layers.safetensors
# ----------------------------------------------------------------------------------------------

def conv_block(cin, cout, k, stride, groups):
    """YOLOv5 Conv: Conv2d(bias=False, padding=k//2) → BatchNorm2d(1e-3, 0.03) → SiLU."""
    block = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        bn=nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03),
        act=nn.SiLU(),
    ))
    with torch.no_grad():
        block.conv.weight.copy_(0.3 * torch.randn_like(block.conv.weight))
        block.bn.weight.copy_(0.5 + torch.rand(cout))
        block.bn.bias.copy_(0.2 * torch.randn(cout))
        block.bn.running_mean.copy_(0.5 * torch.randn(cout))
        block.bn.running_var.copy_(0.5 + 1.5 * torch.rand(cout))
    return block


def run_module(module, inp, grad_out):
    x = inp.clone().requires_grad_()
    y = module(x)
    (y * grad_out).sum().backward()
    return y.detach(), x.grad


def make_nn_layers(out):
    torch.manual_seed(SEED)
    t = OrderedDict()
    blocks = {  # prefix: (cin, cout, k, stride, groups, input shape)
        "c3s2": (4, 6, 3, 2, 1, (2, 4, 9, 7)),
        "c1s1": (6, 5, 1, 1, 1, (3, 6, 5, 5)),
        "dw3s1": (6, 6, 3, 1, 6, (2, 6, 6, 6)),
    }
    for p, (cin, cout, k, stride, groups, shape) in blocks.items():
        block = conv_block(cin, cout, k, stride, groups)
        inp = torch.randn(shape)
        with torch.no_grad():
            out_shape = copy.deepcopy(block).eval()(inp).shape
        grad_out = torch.randn(out_shape)
        t[f"{p}.input"] = inp
        t[f"{p}.weight"] = block.conv.weight.detach().clone()
        for name in ("weight", "bias", "running_mean", "running_var"):
            t[f"{p}.bn.{name}"] = getattr(block.bn, name).detach().clone()
        t[f"{p}.grad_out"] = grad_out
        for mode in ("train", "eval"):
            m = copy.deepcopy(block).train(mode == "train")
            y, gx = run_module(m, inp, grad_out)
            t[f"{p}.{mode}.y"] = y
            t[f"{p}.{mode}.grad_input"] = gx
            t[f"{p}.{mode}.grad_weight"] = m.conv.weight.grad
            t[f"{p}.{mode}.grad_bn_weight"] = m.bn.weight.grad
            t[f"{p}.{mode}.grad_bn_bias"] = m.bn.bias.grad
            t[f"{p}.{mode}.running_mean"] = m.bn.running_mean.detach().clone()
            t[f"{p}.{mode}.running_var"] = m.bn.running_var.detach().clone()

    det = nn.Conv2d(6, 7, 1, bias=True)
    with torch.no_grad():
        det.weight.copy_(0.3 * torch.randn_like(det.weight))
        det.bias.copy_(0.2 * torch.randn_like(det.bias))
    inp = torch.randn(2, 6, 4, 5)
    grad_out = torch.randn(2, 7, 4, 5)
    y, gx = run_module(det, inp, grad_out)
    t.update({"det.input": inp, "det.weight": det.weight.detach().clone(),
              "det.bias": det.bias.detach().clone(), "det.grad_out": grad_out, "det.y": y,
              "det.grad_input": gx, "det.grad_weight": det.weight.grad,
              "det.grad_bias": det.bias.grad})

    up = nn.Upsample(scale_factor=2, mode="nearest")
    inp = torch.randn(2, 3, 4, 5)
    grad_out = torch.randn(2, 3, 8, 10)
    y, gx = run_module(up, inp, grad_out)
    t.update({"up.input": inp, "up.grad_out": grad_out, "up.y": y, "up.grad_input": gx})

    pool = nn.MaxPool2d(5, 1, 2)
    for p, inp in (("pool", torch.randint(0, 4, (2, 3, 7, 6)).to(F32) / 4),  # many exact ties
                   ("pool2", torch.randn(2, 3, 7, 6))):
        grad_out = torch.randn(2, 3, 7, 6)
        y, gx = run_module(pool, inp, grad_out)
        t.update({f"{p}.input": inp, f"{p}.grad_out": grad_out, f"{p}.y": y,
                  f"{p}.grad_input": gx})

    tensors = OrderedDict((k, v.detach().to(F32).contiguous()) for k, v in t.items())
    path = os.path.join(out, "nn_layers.safetensors")
    # one metadata key: safetensors writes a map's keys in random order
    save_file(tensors, path, metadata={"generator": f"{GENERATOR} (torch {torch.__version__})"})
    os.chmod(path, 0o644)
    return report(path, f"{len(tensors)} tensors")


# ----------------------------------------------------------------------------------------------
# nn_optim.json
# ----------------------------------------------------------------------------------------------

OPTIM_SHAPES = [[[3, 2], [4]], [[2, 3], [5]], [[4, 1], [3]]]  # 3 groups × 2 params
OPTIM_WD = [0.0, 0.0005, 0.0]
OPTIM_STEPS = 6


def optim_schedule(t):
    """Per-group lr and momentum at step t, warm-up-like (float32-representable values)."""
    xi = [0, OPTIM_STEPS - 1]
    lr = [r32(np.interp(t, xi, [0.1, 0.01])), r32(np.interp(t, xi, [0.0, 0.01])),
          r32(np.interp(t, xi, [0.0, 0.005]))]
    momentum = [r32(np.interp(t, xi, [m0, 0.937])) for m0 in (0.8, 0.85, 0.9)]
    return lr, momentum


def run_optimizer(kind):
    params = [[torch.randn(s) for s in shapes] for shapes in OPTIM_SHAPES]
    record = {"groups": [{"weight_decay": wd,
                          "params": [{"shape": list(p.shape), "init": flat(p)} for p in ps]}
                         for wd, ps in zip(OPTIM_WD, params)]}
    leaves = [[p.clone().requires_grad_() for p in ps] for ps in params]
    lr0, m0 = optim_schedule(0)
    groups = [{"params": ps, "weight_decay": wd} for ps, wd in zip(leaves, OPTIM_WD)]
    if kind == "sgd":
        opt = torch.optim.SGD(groups, lr=lr0[0], momentum=m0[0], dampening=0, nesterov=True,
                              foreach=False)
    else:
        opt = torch.optim.Adam(groups, lr=lr0[0], betas=(m0[0], 0.999), eps=1e-8, foreach=False)
    steps = []
    for t in range(OPTIM_STEPS):
        lr, momentum = optim_schedule(t)
        for g, l, m in zip(opt.param_groups, lr, momentum):
            g["lr"] = l
            if kind == "sgd":
                g["momentum"] = m
            else:
                g["betas"] = (m, 0.999)
        grads = []
        for ps in leaves:
            for p in ps:
                p.grad = 0.5 * torch.randn(p.shape)
                grads.append(flat(p.grad))
        opt.step()
        steps.append({"lr": lr, "momentum": momentum, "grads": grads,
                      "expected": [flat(p) for ps in leaves for p in ps]})
    record["steps"] = steps
    record["expected"] = steps[-1]["expected"]  # after the last step
    return record


def make_nn_optim(out):
    torch.manual_seed(SEED)
    data = {"sgd": run_optimizer("sgd"), "adam": run_optimizer("adam")}
    return write_json(out, "nn_optim.json", data, "sgd + adam")


# ----------------------------------------------------------------------------------------------
# nn_sched.json
# ----------------------------------------------------------------------------------------------

SCHED_HYP = {"lr0": 0.00334, "lrf": 0.15135, "momentum": 0.74832,
             "warmup_epochs": 3.3835, "warmup_momentum": 0.59462, "warmup_bias_lr": 0.18657,
             "batch_size": 16, "nbs": 64, "nb": 40, "epochs": 6}


def run_yolov5_schedule(cos_lr):
    """YOLOv5 train.py: optimizer groups, LambdaLR, warm-up, scheduler.step() per epoch."""
    hyp = SCHED_HYP
    epochs, nb, nbs, batch_size = hyp["epochs"], hyp["nb"], hyp["nbs"], hyp["batch_size"]
    bias, weight, bn_weight = (nn.Parameter(torch.zeros(2)) for _ in range(3))
    # smart_optimizer: SGD(g[2] biases), then g[0] weights with decay, then g[1] BN weights
    optimizer = torch.optim.SGD([bias], lr=hyp["lr0"], momentum=hyp["momentum"], nesterov=True)
    optimizer.add_param_group({"params": [weight], "weight_decay": 0.0005})
    optimizer.add_param_group({"params": [bn_weight], "weight_decay": 0.0})
    lrf = hyp["lrf"]
    if cos_lr:  # one_cycle(1, lrf, epochs)
        lf = lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1  # noqa: E731
    else:
        lf = lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    start_epoch = 0
    accumulate = max(round(nbs / batch_size), 1)
    nw = max(round(hyp["warmup_epochs"] * nb), 100)
    last_opt_step = -1
    scheduler.last_epoch = start_epoch - 1  # do not move
    records = []
    for epoch in range(start_epoch, epochs):
        for i in range(nb):
            ni = i + nb * epoch
            if ni <= nw:
                xi = [0, nw]
                accumulate = max(1, np.interp(ni, xi, [1, nbs / batch_size]).round())
                for j, x in enumerate(optimizer.param_groups):
                    x["lr"] = np.interp(ni, xi, [hyp["warmup_bias_lr"] if j == 0 else 0.0,
                                                 x["initial_lr"] * lf(epoch)])
                    if "momentum" in x:
                        x["momentum"] = np.interp(ni, xi, [hyp["warmup_momentum"],
                                                           hyp["momentum"]])
            records.append({"ni": ni, "epoch": epoch,
                            "lr": [float(g["lr"]) for g in optimizer.param_groups],
                            "momentum": [float(g["momentum"]) for g in optimizer.param_groups],
                            "accumulate": int(accumulate)})
            if ni - last_opt_step >= accumulate:
                optimizer.step()  # no gradients: a no-op that keeps LambdaLR's bookkeeping real
                last_opt_step = ni
        scheduler.step()
    return records, nw


def make_nn_sched(out):
    linear, nw = run_yolov5_schedule(cos_lr=False)
    one_cycle, _ = run_yolov5_schedule(cos_lr=True)
    data = {"hyp": dict(SCHED_HYP, nw=nw), "linear": linear, "one_cycle": one_cycle}
    return write_json(out, "nn_sched.json", data, f"{len(linear)} iterations × 2 schedules",
                      record_lists=("linear", "one_cycle"))


# ----------------------------------------------------------------------------------------------
# nn_ema.json
# ----------------------------------------------------------------------------------------------

class ModelEMA:
    """YOLOv5 ModelEMA (utils/torch_utils.py), without the device / DDP handling."""

    def __init__(self, model, decay=0.9999, tau=2000, updates=0):
        self.ema = copy.deepcopy(model).eval()
        self.updates = updates
        self.decay = lambda x: decay * (1 - math.exp(-x / tau))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def update(self, model):
        self.updates += 1
        d = self.decay(self.updates)
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v *= d
                v += (1 - d) * msd[k].detach()


def float_state(module):
    return OrderedDict((k, v) for k, v in module.state_dict().items() if v.dtype.is_floating_point)


def run_ema(decay, tau):
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, bias=False), bn=nn.BatchNorm2d(4)))
    with torch.no_grad():
        model.bn.weight.copy_(0.5 + torch.rand(4))
        model.bn.bias.copy_(0.2 * torch.randn(4))
        model.bn.running_mean.copy_(0.5 * torch.randn(4))
        model.bn.running_var.copy_(0.5 + 1.5 * torch.rand(4))
    state = float_state(model)
    config = {"decay": decay, "tau": tau, "names": list(state),
              "shapes": {k: list(v.shape) for k, v in state.items()},
              "init_model": {k: flat(v) for k, v in state.items()}, "updates": []}
    ema = ModelEMA(model, decay=decay, tau=tau)
    for _ in range(5):
        with torch.no_grad():  # perturb the model's whole state, running statistics included
            for k, v in model.state_dict().items():
                if k.endswith("running_var"):
                    v.mul_(torch.exp(0.2 * torch.randn_like(v)))
                elif v.dtype.is_floating_point:
                    v.add_(0.1 * torch.randn_like(v))
                else:
                    v.add_(1)  # num_batches_tracked: integer, skipped by the EMA
        ema.update(model)
        config["updates"].append({"model": {k: flat(v) for k, v in float_state(model).items()},
                                  "ema": {k: flat(v) for k, v in float_state(ema.ema).items()}})
    return config


def make_nn_ema(out):
    torch.manual_seed(SEED)
    data = {"configs": [run_ema(0.9999, 2000), run_ema(0.9, 2)]}
    return write_json(out, "nn_ema.json", data, "2 configs × 5 updates")


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------

def report(path, what):
    size = os.path.getsize(path)
    print(f"wrote {path}  ({size / 1024:.1f} KiB, {what})")
    return path


def write_text(out, name, text, what):
    path = os.path.join(out, name)
    with open(path, "w") as f:
        f.write(text)
    return report(path, what)


def write_json(out, name, data, what, record_lists=()):
    """Compact JSON; lists named in `record_lists` get one record per line."""
    parts = []
    for k, v in data.items():
        if k in record_lists:
            rows = ",\n".join(json.dumps(r, separators=(",", ":")) for r in v)
            parts.append(f"{json.dumps(k)}: [\n{rows}\n]")
        else:
            parts.append(f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}")
    return write_text(out, name, "{\n" + ",\n".join(parts) + "\n}\n", what)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures", help="output directory")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    for make in (make_quant_golden, make_quant_init, make_nn_layers, make_nn_optim,
                 make_nn_sched, make_nn_ema):
        make(args.out)


if __name__ == "__main__":
    main()
