"""The CCAD model: variants, freezing, guidance, DDIM, reconstruction, sd15 loading."""

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ccad_tutorial import ddim
from ccad_tutorial.model import CCAD
from ccad_tutorial.presets import CCADConfig, make_config

SMALL = dict(image_size=32, num_queries=8)


def tiny_model(variant="F", **overrides) -> CCAD:
    torch.manual_seed(0)
    cfg = make_config("tiny", variant, scaling_factor=1.0, **{**SMALL, **overrides})
    return CCAD(cfg, torch.randn(10, 24))


def trainable_names(model: CCAD) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("variant", "tokens"), [("V", 10), ("C", 10), ("F", 8), ("uncond", 1)])
def test_each_variant_conditions_on_its_own_tokens(variant, tokens):
    model = tiny_model(variant)
    ctx = model.context(batch_size=2)
    assert ctx.shape == (2, tokens, model.cfg.cross_attention_dim)
    images = torch.rand(2, 3, 32, 32)
    x0 = model.encode(images)
    assert x0.shape[1] == (3 if variant == "V" else 4)
    assert x0.shape[-1] == 32 // model.factor
    loss = model.loss(x0, images, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_random_init_trains_the_whole_unet_but_never_the_vae():
    model = tiny_model("F", freeze_encoder=False)
    names = trainable_names(model)
    unet = {f"unet.{n}" for n, _ in model.unet.named_parameters()}
    fcm = {f"fcm.{n}" for n, _ in model.fcm.named_parameters()}
    assert names == unet | fcm
    assert not any(n.startswith(("vae.", "scorer.")) for n in names)


def test_frozen_encoder_trains_exactly_decoder_guidance_and_projection():
    model = tiny_model("C", freeze_encoder=True, guidance="bottleneck")
    names = trainable_names(model)
    decoder = ("unet.up_blocks.", "unet.conv_norm_out.", "unet.conv_out.")
    expected = {
        n for n, _ in model.named_parameters() if n.startswith(decoder + ("controlnet.", "proj."))
    }
    assert names == expected
    for frozen in ("unet.conv_in.", "unet.time_embedding.", "unet.down_blocks.", "unet.mid_block."):
        assert not any(n.startswith(frozen) for n in names)


def test_loss_gradients_reach_only_trainable_parameters():
    model = tiny_model("F", freeze_encoder=True)
    images = torch.rand(2, 3, 32, 32)
    model.loss(model.encode(images), images).backward()
    assert model.fcm.queries.grad is not None
    assert model.unet.conv_out.weight.grad is not None
    assert model.unet.conv_in.weight.grad is None
    assert all(p.grad is None for p in model.vae.parameters())


@pytest.mark.parametrize("variant", ["V", "F"])
def test_bottleneck_guidance_passes_only_the_lowest_level(variant, monkeypatch):
    model = tiny_model(variant, guidance="bottleneck")
    seen = {}
    forward = model.unet.forward

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.unet, "forward", spy)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # make the zero-initialised ControlNet outputs non-zero
        for p in model.controlnet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.loss(model.encode(images), images)
    residuals = seen["down_block_additional_residuals"]
    lowest = min(r.shape[-1] for r in residuals)
    for r in residuals:
        assert (r.abs().sum() > 0) == (r.shape[-1] == lowest)
    assert seen["mid_block_additional_residual"].abs().sum() > 0


def test_ddim_starts_at_t_start_and_takes_ddim_steps():
    model = tiny_model("C", t_start=400, ddim_steps=10)
    sched, timesteps = model.ddim()
    assert timesteps.tolist() == list(range(400, 0, -40))
    assert sched.config.num_train_timesteps // sched.num_inference_steps == 40


@pytest.mark.parametrize(("t_start", "steps"), [(400, 10), (999, 3), (37, 4)])
def test_ccad_runs_chapter_2s_ddim_schedule_with_the_truncated_ending(t_start, steps):
    model = tiny_model("C", t_start=t_start, ddim_steps=steps, clip_sample=True)
    sched, timesteps = model.ddim()
    ref, ref_timesteps = ddim.ddim_timesteps(
        model.noise_scheduler, t_start, steps, to_zero=False, clip_sample=True
    )
    assert torch.equal(timesteps, ref_timesteps) and torch.equal(sched.timesteps, timesteps)
    assert dict(sched.config) == dict(ref.config)
    assert torch.equal(sched.alphas_cumprod, ref.alphas_cumprod)
    assert sched.num_inference_steps == ref.num_inference_steps
    # the truncated ending: the last timestep lies above 0 and lands at alpha-bar_0
    stride = 1000 // sched.num_inference_steps
    assert 0 < timesteps[-1] <= stride
    assert sched.final_alpha_cumprod == model.noise_scheduler.alphas_cumprod[0] < 1
    # chapter 2's ending of the same schedule goes to step 0 and then alpha-bar 1
    to_zero, to_zero_timesteps = ddim.ddim_timesteps(model.noise_scheduler, t_start, steps)
    assert to_zero.final_alpha_cumprod == 1
    assert 0 <= to_zero_timesteps[-1] < 1000 // to_zero.num_inference_steps


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ccad_denoise_is_ddim_loop_with_guided_noise(eta):
    model = tiny_model("F", t_start=300, ddim_steps=3, eta=eta).eval()
    sched, timesteps = model.ddim()
    h, c = model.cfg.image_size // model.factor, model.unet.config.in_channels
    x = torch.randn(2, c, h, h, generator=torch.Generator().manual_seed(0))
    ctx = model.context(2)
    with torch.no_grad():
        torch.manual_seed(1)  # eta > 0 draws from the global generator
        out = model.denoise(x, sched, timesteps, ctx, None)
        torch.manual_seed(1)
        expected = ddim.ddim_loop(
            lambda x_t, t: model.guided_noise(x_t, t, ctx, None), x, sched, timesteps, eta
        )
    assert torch.equal(out, expected)


def test_reconstruction_is_deterministic_and_independent_of_batch_size():
    model = tiny_model("F", ddim_steps=2).eval()
    images = torch.rand(3, 3, 32, 32)
    a = model.reconstruct(images, noise_seed=1, batch_size=3)
    b = model.reconstruct(images, noise_seed=1, batch_size=2)
    c = model.reconstruct(images, noise_seed=2, batch_size=3)
    assert a.shape == images.shape and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(a, c)


def test_config_round_trips_through_json_dict():
    cfg = make_config("tiny", "C", xi=0.2)
    again = CCADConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.block_out_channels == cfg.block_out_channels


def test_bad_variant_and_unknown_field_are_clear_errors():
    with pytest.raises(ValueError, match="variant"):
        make_config("tiny", "X")
    with pytest.raises(ValueError, match="unknown CCADConfig fields"):
        make_config("tiny", "F", not_a_field=1)


def test_sd15_from_stable_diffusion_loads_an_sd_layout_folder(tmp_path):
    """A tiny UNet/VAE saved like an SD repo (unet/, vae/) loads through the sd15 code path."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        scaling_factor=0.5,
    )
    unet.save_pretrained(tmp_path / "unet")
    vae.save_pretrained(tmp_path / "vae")
    cfg = make_config(
        "sd15", "F", image_size=32, num_queries=4,
        score_mode="l1", score_pretrained=False,
    )  # fmt: skip
    model = CCAD.from_stable_diffusion(tmp_path, cfg, torch.randn(6, 12))
    torch.testing.assert_close(model.unet.conv_in.weight, unet.conv_in.weight)
    torch.testing.assert_close(model.vae.decoder.conv_out.weight, vae.decoder.conv_out.weight)
    assert model.scaling_factor == 0.5
    assert not model.unet.down_blocks[0].resnets[0].conv1.weight.requires_grad  # frozen encoder
    assert model.unet.up_blocks[0].resnets[0].conv1.weight.requires_grad
    images = torch.rand(1, 3, 32, 32)
    assert model.reconstruct(images).shape == images.shape


def test_from_stable_diffusion_without_weights_is_a_clear_error(tmp_path):
    cfg = make_config("sd15", "F", score_mode="l1", score_pretrained=False)
    with pytest.raises(ValueError, match="unet/ and vae/"):
        CCAD.from_stable_diffusion(tmp_path, cfg, torch.randn(6, 12))


def test_retrieved_bank_conditions_each_image_on_its_nearest_normals_only():
    model = tiny_model("C", bank_mode="retrieved", retrieve_k=3)
    axis = torch.zeros(24)
    axis[0] = 1.0
    bank = torch.randn(10, 24) * 1e-3 + torch.arange(10.0).unsqueeze(1) * axis  # entry i ~ i * e0
    query = torch.stack([bank[4], bank[0] + 0.4 * axis])  # a bank member; a new image near 0
    picked = model.retrieve(bank, query)[..., 0].round()  # (2, 3): which entries were picked
    assert set(picked[0].tolist()) in ({2.0, 3.0, 5.0}, {3.0, 5.0, 6.0})  # never entry 4 itself
    assert set(picked[1].tolist()) == {0.0, 1.0, 2.0}
    ctx = model.context(2, bank=bank, query=query)
    assert ctx.shape == (2, 3, model.cfg.cross_attention_dim)
    assert not torch.allclose(ctx[0], ctx[1])
    images = torch.rand(2, 3, 32, 32)
    assert model.global_features(images).shape == (2, model.extractor.dim)


def test_the_scorer_is_the_detectors_and_never_moves_the_global_rng():
    """The model holds no scorer (the detector does); the scorer's random backbone comes
    from its own fixed seed, so building one leaves the global RNG where it was."""
    from ccad_tutorial.detectors import build_scorer

    model = tiny_model("F")
    assert not any(k.startswith("scorer.") for k in model.state_dict())
    torch.manual_seed(0)
    scorer = build_scorer(model.cfg, "feature")
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))
    again = build_scorer(model.cfg, "feature")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in scorer.state_dict().items())
