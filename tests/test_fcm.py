"""Tests of the Fine Compression Module (ccad_tutorial/fcm.py)."""

import pytest
import torch

from ccad_tutorial.fcm import FineCompressionModule


def _fcm(**kwargs) -> FineCompressionModule:
    torch.manual_seed(0)
    return FineCompressionModule(bank_dim=20, ctx_dim=16, num_queries=6, num_heads=4, **kwargs)


def test_fcm_compresses_an_unbatched_bank_to_k_tokens():
    out = _fcm()(torch.randn(30, 20))
    assert out.shape == (6, 16)


def test_fcm_compresses_a_batched_bank_to_k_tokens_per_item():
    out, weights = _fcm()(torch.randn(3, 30, 20), return_attention=True)
    assert out.shape == (3, 6, 16)
    assert weights.shape == (3, 4, 6, 30)


def test_fcm_attention_rows_sum_to_one():
    _, weights = _fcm()(torch.randn(30, 20), return_attention=True)
    assert weights.shape == (4, 6, 30)
    assert torch.allclose(weights.sum(-1), torch.ones(4, 6), atol=1e-5)
    assert (weights >= 0).all()


def test_fcm_gradients_reach_queries_and_bank_projection():
    fcm = _fcm()
    fcm(torch.randn(2, 30, 20)).pow(2).sum().backward()
    for param in (fcm.queries, fcm.bank_proj.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_fcm_is_invariant_to_the_order_of_bank_rows():
    fcm = _fcm()
    bank = torch.randn(30, 20)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    out, weights = fcm(bank, return_attention=True)
    out_shuffled, weights_shuffled = fcm(bank[perm], return_attention=True)
    assert torch.allclose(out, out_shuffled, atol=1e-5)
    # the attention follows its bank entry to the new position
    assert torch.allclose(weights[..., perm], weights_shuffled, atol=1e-6)


def test_fcm_ignores_padded_bank_rows():
    fcm = _fcm()
    bank = torch.randn(30, 20)
    padded = torch.cat([bank, torch.randn(5, 20)])
    mask = torch.zeros(35, dtype=torch.bool)
    mask[30:] = True
    out, weights = fcm(padded, return_attention=True, key_padding_mask=mask)
    assert torch.allclose(out, fcm(bank), atol=1e-5)
    assert weights[..., 30:].abs().max() == 0


def test_fcm_names_expected_and_actual_bank_dim():
    with pytest.raises(ValueError, match=r"D=20.*got D=7"):
        _fcm()(torch.randn(30, 7))


def test_fcm_rejects_a_bank_of_wrong_rank():
    with pytest.raises(ValueError, match=r"\(M, D\) or \(B, M, D\)"):
        _fcm()(torch.randn(30))


def test_fcm_rejects_heads_that_do_not_divide_ctx_dim():
    with pytest.raises(ValueError, match="divisible by num_heads=3"):
        FineCompressionModule(bank_dim=20, ctx_dim=16, num_heads=3)
