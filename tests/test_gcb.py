"""Tests of the Global-feature Conditioned Block (ccad_tutorial/gcb.py) and of looking
inside a UNet (ccad_tutorial/attention.py)."""

import math

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock

from ccad_tutorial.attention import attention_entropy, capture_cross_attention, gcb_table
from ccad_tutorial.gcb import GlobalFeatureConditionedBlock, find_gcbs, load_from_diffusers


def _random_basic_block() -> BasicTransformerBlock:
    """A diffusers block with random weights everywhere (LayerNorms and biases too)."""
    torch.manual_seed(0)
    basic = BasicTransformerBlock(32, 4, 8, cross_attention_dim=24, activation_fn="geglu")
    with torch.no_grad():
        for param in basic.parameters():
            param.normal_(0.0, 0.2)
    return basic.eval()


def _inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 10, 32, generator=generator), torch.randn(2, 7, 24, generator=generator)


def _tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=24,
        attention_head_dim=8,
        norm_num_groups=8,
        sample_size=16,
    ).eval()


def test_gcb_matches_diffusers_basic_transformer_block():
    basic = _random_basic_block()
    gcb = load_from_diffusers(GlobalFeatureConditionedBlock(32, 4, 8, context_dim=24), basic)
    x, ctx = _inputs()
    with torch.no_grad():
        expected = basic(x, encoder_hidden_states=ctx)
        out = gcb(x, ctx)
        out_explicit, _ = gcb(x, ctx, return_attention=True)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(out_explicit, expected, atol=1e-5)


def test_gcb_from_diffusers_reads_sizes_from_the_block():
    basic = _random_basic_block()
    gcb = GlobalFeatureConditionedBlock.from_diffusers(basic)
    x, ctx = _inputs()
    with torch.no_grad():
        assert torch.allclose(gcb(x, ctx), basic(x, encoder_hidden_states=ctx), atol=1e-5)


def test_gcb_cross_attention_rows_sum_to_one():
    torch.manual_seed(0)
    x, ctx = _inputs()
    out, weights = GlobalFeatureConditionedBlock(32, 4, 8, context_dim=24)(x, ctx, True)
    assert out.shape == (2, 10, 32)
    assert weights.shape == (2, 4, 10, 7)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 10), atol=1e-5)


def test_gcb_gradients_reach_the_bank_tokens_and_cross_attention():
    torch.manual_seed(0)
    gcb = GlobalFeatureConditionedBlock(32, 4, 8, context_dim=24)
    x, ctx = _inputs()
    ctx.requires_grad_(True)
    gcb(x, ctx).pow(2).sum().backward()
    assert ctx.grad.abs().sum() > 0
    assert gcb.attn2.to_k.weight.grad.abs().sum() > 0
    assert gcb.ff_in.weight.grad.abs().sum() > 0


def test_gcb_names_the_expected_context_dim():
    gcb = GlobalFeatureConditionedBlock(32, 4, 8, context_dim=24)
    with pytest.raises(ValueError, match=r"\(B, M, 24\)"):
        gcb(torch.randn(1, 10, 32), torch.randn(1, 7, 16))


def test_load_from_diffusers_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="attn2.to_k.weight"):
        load_from_diffusers(GlobalFeatureConditionedBlock(32, 4, 8, 16), _random_basic_block())


def test_load_from_diffusers_rejects_non_geglu_blocks():
    basic = BasicTransformerBlock(32, 4, 8, cross_attention_dim=24, activation_fn="gelu")
    with pytest.raises(ValueError, match="activation_fn='gelu'"):
        GlobalFeatureConditionedBlock.from_diffusers(basic)


def test_find_gcbs_lists_the_cross_attention_blocks_of_a_unet():
    names = [name for name, _ in find_gcbs(_tiny_unet())]
    assert names  # the down, mid and up levels with cross-attention
    assert all(name.endswith("transformer_blocks.0") for name in names)
    assert any(name.startswith("down_blocks.1") for name in names)
    assert any(name.startswith("up_blocks.0") for name in names)
    assert not any(name.startswith(("down_blocks.0", "up_blocks.1")) for name in names)


def test_unet_output_depends_on_the_bank_tokens():
    unet = _tiny_unet()
    sample = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    bank_a, bank_b = torch.randn(2, 1, 5, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out_a = unet(sample, 10, encoder_hidden_states=bank_a).sample
        out_b = unet(sample, 10, encoder_hidden_states=bank_b).sample
        out_a_again = unet(sample, 10, encoder_hidden_states=bank_a).sample
    assert torch.equal(out_a, out_a_again)
    assert (out_a - out_b).abs().max() > 1e-4


def test_gcb_replays_a_unet_cross_attention_block():
    unet = _tiny_unet()
    name, basic = find_gcbs(unet)[0]
    gcb = GlobalFeatureConditionedBlock.from_diffusers(basic)
    x = torch.randn(1, 16, basic.dim)
    bank = torch.randn(1, 5, 24)
    with torch.no_grad():
        assert torch.allclose(gcb(x, bank), basic(x, encoder_hidden_states=bank), atol=1e-5)


def _unet_inputs(batch: int = 2, tokens: int = 5):
    generator = torch.Generator().manual_seed(4)
    sample = torch.randn(batch, 4, 16, 16, generator=generator)
    return sample, torch.randn(batch, tokens, 24, generator=generator)


def test_captured_cross_attention_rows_sum_to_one_with_shape_batch_heads_positions_tokens():
    unet = _tiny_unet()
    sample, bank = _unet_inputs(batch=2, tokens=5)
    with torch.no_grad(), capture_cross_attention(unet) as stores:
        unet(sample, 10, encoder_hidden_states=bank)
    assert list(stores) == [name for name, _ in find_gcbs(unet)]
    for name, store in stores.items():
        (probs,) = store.probs  # one forward pass: one record
        heads = dict(find_gcbs(unet))[name].num_attention_heads
        assert probs.shape == (2 * heads, 8 * 8, 5)  # 16 px sample, the GCBs run at 8 x 8
        assert torch.allclose(probs.sum(-1), torch.ones(2 * heads, 64), atol=1e-5)
        assert (probs >= 0).all()


def test_capturing_leaves_the_unet_output_and_processors_unchanged():
    unet = _tiny_unet()
    sample, bank = _unet_inputs()
    before = {name: block.attn2.processor for name, block in find_gcbs(unet)}
    with torch.no_grad():
        expected = unet(sample, 10, encoder_hidden_states=bank).sample
        with capture_cross_attention(unet):
            captured = unet(sample, 10, encoder_hidden_states=bank).sample
    assert torch.allclose(captured, expected, atol=1e-5)
    assert {name: block.attn2.processor for name, block in find_gcbs(unet)} == before


def test_captured_probabilities_are_the_explicit_gcb_attention_weights():
    unet = _tiny_unet()
    name, basic = find_gcbs(unet)[-1]
    gcb = GlobalFeatureConditionedBlock.from_diffusers(basic)
    x, bank = torch.randn(2, 16, basic.dim), torch.randn(2, 5, 24)
    with torch.no_grad(), capture_cross_attention(unet, [name]) as stores:
        basic(x, encoder_hidden_states=bank)
        _, weights = gcb(x, bank, return_attention=True)  # (B, heads, N, M)
    assert torch.allclose(stores[name].probs[0], weights.flatten(0, 1), atol=1e-5)


def test_capture_names_the_gcbs_it_knows_when_given_a_wrong_name():
    with pytest.raises(ValueError, match="down_blocks.1.attentions.0.transformer_blocks.0"):
        with capture_cross_attention(_tiny_unet(), ["up_blocks.9"]):
            pass


def test_gcb_table_gives_each_blocks_resolution_and_token_counts():
    rows = gcb_table(_tiny_unet(), num_tokens=7)
    assert [row["name"] for row in rows] == [name for name, _ in find_gcbs(_tiny_unet())]
    assert [row["part"] for row in rows] == ["down", "up", "up", "mid"]
    assert all(row["side"] == 8 and row["positions"] == 64 for row in rows)
    assert all(row["bank_tokens"] == 7 and row["channels"] == 64 for row in rows)
    assert rows[0]["scores"] == rows[0]["heads"] * 64 * (64 + 7)


def test_gcb_table_of_stable_diffusion_builds_on_the_meta_device():
    from ccad_tutorial.networks import build_unet
    from ccad_tutorial.presets import make_config

    with torch.device("meta"):  # shapes only: no weights are allocated
        unet = build_unet(make_config("sd15", "C"))
    rows = gcb_table(unet, num_tokens=20)
    assert len(rows) == 16  # SD v1.5: 2 per down level x 3, 1 mid, 3 per up level x 3
    sides = {(row["part"], row["level"]): row["side"] for row in rows}
    assert sides == {
        ("down", 0): 32, ("down", 1): 16, ("down", 2): 8, ("mid", None): 4,
        ("up", 1): 8, ("up", 2): 16, ("up", 3): 32,
    }  # fmt: skip


def test_attention_entropy_is_log_m_for_uniform_rows_and_zero_for_one_hot_rows():
    uniform = torch.full((3, 4, 10), 0.1)
    one_hot = torch.nn.functional.one_hot(torch.tensor([2, 7]), 10).float()
    assert torch.allclose(attention_entropy(uniform), torch.full((3, 4), math.log(10)))
    assert torch.equal(attention_entropy(one_hot), torch.zeros(2))


def test_guidance_numbers_follow_the_image_size_not_the_unets_sample_size():
    """SD v1.5's config says sample_size 64 (512 px); CCAD runs it at 256 px."""
    import dataclasses

    from ccad_tutorial.networks import build_unet, guidance_numbers
    from ccad_tutorial.presets import make_config

    cfg = make_config("tiny", "C", image_size=64)
    with torch.device("meta"):
        own = build_unet(cfg)
        for_512 = build_unet(dataclasses.replace(cfg, image_size=512))
    assert for_512.config.sample_size != own.config.sample_size
    assert guidance_numbers(cfg, for_512, 12) == guidance_numbers(cfg, own, 12)
