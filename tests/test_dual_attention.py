"""Dual attention (RAM-Avatar Sec. 3.2): criss-cross implementations agree, distance prior,
alpha = 0 is the identity, sparsity pattern, gradients (CPU, small sizes)."""

from __future__ import annotations

import pytest
import torch

from ram_avatar.models.dual_attention import (CrissCrossAttention, DualAttention,
                                              criss_cross_attention, criss_cross_dense,
                                              criss_cross_reference, distance_weights)

SIZES = [(1, 1), (1, 5), (4, 1), (3, 3), (5, 7), (8, 6)]


def _qkv(h, w, b=2, cq=3, c=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, cq, h, w, generator=g, dtype=dtype),
            torch.randn(b, cq, h, w, generator=g, dtype=dtype),
            torch.randn(b, c, h, w, generator=g, dtype=dtype))


@pytest.mark.parametrize("h,w", SIZES)
def test_efficient_matches_reference_and_dense(h, w):
    q, k, v = _qkv(h, w, seed=h * 10 + w)
    eff = criss_cross_attention(q, k, v)
    ref = criss_cross_reference(q, k, v)
    dense = criss_cross_dense(q, k, v)
    assert eff.shape == (2, 4, h, w)
    assert torch.allclose(eff, ref, atol=1e-5, rtol=0)
    assert torch.allclose(eff, dense, atol=1e-5, rtol=0)


@pytest.mark.parametrize("power", [0.8, 0.0, 2.0])
def test_implementations_agree_for_other_powers_and_gradients(power):
    q, k, v = _qkv(5, 4, seed=3)
    grads = []
    for fn in (criss_cross_attention, criss_cross_reference, criss_cross_dense):
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        out = fn(qq, kk, vv, power)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), qq.grad, kk.grad, vv.grad))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_distance_weights():
    d = distance_weights(4, 0.8)
    assert d.shape == (4, 4)
    assert torch.allclose(d.diagonal(), torch.ones(4))
    assert torch.isclose(d[0, 1], torch.tensor(0.5))
    assert torch.isclose(d[3, 1], torch.tensor(1.0 / (2 ** 0.8 + 1)))
    assert torch.equal(d, d.T)


def test_each_cell_attends_its_row_and_column_only():
    h, w = 5, 6
    q, k, v = _qkv(h, w, b=1)
    v.requires_grad_(True)
    out = criss_cross_attention(q, k, v)
    u = (2, 4)
    out[0, :, u[0], u[1]].sum().backward()
    touched = v.grad[0].abs().sum(0) > 0
    expected = torch.zeros(h, w, dtype=torch.bool)
    expected[u[0], :] = True
    expected[:, u[1]] = True
    assert torch.equal(touched, expected)
    assert int(expected.sum()) == h + w - 1


def test_attention_weights_sum_to_one():
    """Constant values pass through unchanged (the weights are a softmax over H1+W1-1 cells)."""
    q, k, _ = _qkv(4, 5)
    v = torch.full((2, 4, 4, 5), 3.0)
    assert torch.allclose(criss_cross_attention(q, k, v), v, atol=1e-5)


@pytest.mark.parametrize("impl", ["einsum", "reference", "dense"])
def test_alpha_zero_is_identity_skip(impl):
    torch.manual_seed(0)
    cca = CrissCrossAttention(8, impl=impl)
    assert float(cca.alpha.detach()) == 0.0  # learned alpha initialised to 0
    x, y = torch.randn(2, 8, 6, 5), torch.randn(2, 8, 6, 5)
    h = x
    for _ in range(2):  # recurrence 2
        h = cca(h, y)
    assert torch.equal(h, x)


def test_module_implementations_agree_with_shared_weights():
    torch.manual_seed(0)
    mods = {impl: CrissCrossAttention(8, 6, qk_channels=2, impl=impl)
            for impl in ("einsum", "reference", "dense")}
    state = mods["einsum"].state_dict()
    state["alpha"] = torch.tensor([0.7])
    for m in mods.values():
        m.load_state_dict(state)
    x, y = torch.randn(2, 8, 5, 7), torch.randn(2, 6, 5, 7)
    outs = [m(x, y) for m in mods.values()]
    for o in outs[1:]:
        assert torch.allclose(outs[0], o, atol=1e-5, rtol=0)


def test_dual_attention_reference_equals_einsum_and_trains():
    torch.manual_seed(0)
    a = DualAttention(6, hidden=8, downsample=2, recurrence=2, impl="einsum")
    b = DualAttention(6, hidden=8, downsample=2, recurrence=2, impl="reference")
    with torch.no_grad():
        a.spatial.cca.alpha.fill_(0.5)
        a.temporal.cca.alpha.fill_(-0.3)
    b.load_state_dict(a.state_dict())
    f, fe, fp = (torch.randn(2, 6, 16, 20) for _ in range(3))
    out_a, out_b = a(f, fe, fp), b(f, fe, fp)
    assert out_a.shape == f.shape
    assert torch.allclose(out_a, out_b, atol=1e-5, rtol=0)
    # queries really come from the expanded / previous features
    assert not torch.allclose(a(f, fe, fp), a(f, f, fp), atol=1e-4)
    assert not torch.allclose(a(f, fe, fp), a(f, fe, f), atol=1e-4)
    out_a.square().mean().backward()
    for name, p in a.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dual_attention_parts_and_residual():
    torch.manual_seed(0)
    only_s = DualAttention(4, hidden=8, spatial=True, temporal=False)
    assert only_s.temporal is None
    assert not any(n.startswith("temporal.") for n, _ in only_s.named_parameters())
    f = torch.randn(1, 4, 8, 8)
    # temporal input ignored when the temporal part is off
    assert torch.equal(only_s(f, f, torch.randn_like(f)), only_s(f, f, None))
    res = DualAttention(4, hidden=8, residual=True)
    no_res = DualAttention(4, hidden=8, residual=False)  # released code: attention replaces F
    no_res.load_state_dict(res.state_dict())
    fe, fp = torch.randn_like(f), torch.randn_like(f)
    assert torch.allclose(res(f, fe, fp) - f, no_res(f, fe, fp), atol=1e-6)
    with pytest.raises(ValueError):
        DualAttention(4, spatial=False, temporal=False)


def test_bfloat16_autocast_is_finite():
    torch.manual_seed(0)
    m = DualAttention(4, hidden=8)
    f = torch.randn(1, 4, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(f, f, f)
    assert torch.isfinite(out.float()).all()
