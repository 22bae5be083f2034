"""The small DDPM of chapter 2: schedules, training, DDIM and reconstruction from partial noise."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ccad_tutorial import ddpm
from ccad_tutorial.ddim import ddim_loop, ddim_timesteps, denoise, sample
from ccad_tutorial.reconstruction import add_defects, masked_mse, reconstruct

TINY = ddpm.DDPMConfig(
    block_out_channels=(8, 16), norm_num_groups=4, steps=60, batch_size=8, crop_size=16, lr=3e-3
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is as fast, and on a busy machine two threads can be 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_unet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ddpm.build_unet(TINY)


def smooth_images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) in [0, 1]: colour gradients, easy to learn."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    base = 0.5 * ramp[None, :] + 0.5 * ramp[:, None]  # (size, size)
    colour = torch.rand(n, 3, 1, 1, generator=g)
    return (0.3 + 0.6 * colour * base).clamp(0, 1)


class Oracle(nn.Module):
    """A perfect denoiser for one known x0 (B, 3, H, W) in model space: returns the true eps."""

    def __init__(self, x0: torch.Tensor, scheduler) -> None:
        super().__init__()
        self.x0, self.abar = x0, scheduler.alphas_cumprod
        self.dummy = nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, x_t, t):
        abar = self.abar[t].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(x_t - abar.sqrt() * self.x0) / (1 - abar).sqrt())


@pytest.mark.parametrize("schedule", list(ddpm.SCHEDULES))
def test_add_noise_is_the_closed_form_of_the_forward_process(schedule):
    sched = ddpm.make_scheduler(schedule)
    abar = torch.cumprod(1 - sched.betas, 0)  # alpha-bar_t = prod_{s <= t} (1 - beta_s)
    torch.testing.assert_close(sched.alphas_cumprod, abar)
    x0, eps = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    t = torch.tensor([0, 400, 999])
    expected = abar[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - abar[t]).sqrt().view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(sched.add_noise(x0, eps, t), expected)


def test_stable_diffusion_betas_are_linear_in_their_square_root():
    betas = ddpm.make_scheduler("scaled_linear").betas
    torch.testing.assert_close(betas.sqrt(), torch.linspace(0.00085**0.5, 0.012**0.5, 1000))


def test_schedules_destroy_signal_at_different_speeds():
    abar = {name: ddpm.make_scheduler(name).alphas_cumprod for name in ddpm.SCHEDULES}
    for a in abar.values():
        assert (a[1:] < a[:-1]).all()  # noise only ever grows
    assert abar["cosine"][500] > abar["scaled_linear"][500] > abar["linear"][500]
    assert abar["scaled_linear"][-1] > 1e-3 > abar["linear"][-1]  # SD never reaches pure noise


def test_unknown_schedule_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="scaled_linear"):
        ddpm.make_scheduler("quadratic")


def test_unet_keeps_the_shape_and_accepts_larger_images_than_its_crops():
    unet = tiny_unet()
    for size in (16, 32):
        x = torch.randn(2, 3, size, size)
        assert unet(x, torch.tensor([1, 500])).sample.shape == x.shape


def test_random_crops_have_the_requested_size_and_come_from_the_images():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    crops = ddpm.random_crops(images, 5, 4, torch.Generator().manual_seed(0))
    assert crops.shape == (5, 3, 4, 4)
    assert set(crops.flatten().tolist()) <= set(images.flatten().tolist())
    with pytest.raises(ValueError, match="crop_size"):
        ddpm.random_crops(images, 1, 9, torch.Generator())


def test_training_lowers_the_held_out_loss_at_every_timestep():
    unet, sched = tiny_unet(), ddpm.make_scheduler()
    images, held_out = smooth_images(8, seed=0), smooth_images(4, seed=1)
    timesteps = [10, 300, 900]
    before = ddpm.loss_per_timestep(unet, sched, held_out, timesteps)
    losses = ddpm.train_ddpm(unet, sched, images, TINY)
    after = ddpm.loss_per_timestep(unet, sched, held_out, timesteps)
    assert len(losses) == TINY.steps
    assert (after < 0.7 * before).all(), (before, after)
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


def test_training_is_reproducible_from_the_seed():
    sched, images = ddpm.make_scheduler(), smooth_images()
    cfg = ddpm.DDPMConfig(**{**TINY.__dict__, "steps": 3})
    first = ddpm.train_ddpm(tiny_unet(), sched, images, cfg)
    second = ddpm.train_ddpm(tiny_unet(), sched, images, cfg)
    assert first == second


@pytest.mark.parametrize(
    ("t_start", "n_steps"), [(0, 10), (50, 10), (400, 10), (999, 10), (999, 3)]
)
def test_ddim_timesteps_start_at_t_start_and_end_below_zero(t_start, n_steps):
    sched = ddpm.make_scheduler()
    ddim, timesteps = ddim_timesteps(sched, t_start, n_steps)
    stride = 1000 // ddim.num_inference_steps  # what DDIMScheduler.step subtracts
    assert timesteps[0] == t_start and 1 <= len(timesteps) <= n_steps
    assert (timesteps[:-1] - timesteps[1:] == stride).all()
    assert 0 <= timesteps[-1] < stride  # the last step lands below 0: the x0 estimate


def test_t_start_outside_the_schedule_is_refused():
    with pytest.raises(ValueError, match="t_start"):
        ddim_timesteps(ddpm.make_scheduler(), 1000, 10)


@pytest.mark.parametrize(
    ("t_start", "n_steps"), [(1, 10), (50, 10), (400, 5), (400, 10), (800, 8), (999, 10)]
)
def test_the_two_endings_differ_in_the_last_timestep_and_the_final_alpha(t_start, n_steps):
    sched = ddpm.make_scheduler()
    for to_zero in (True, False):
        ddim, timesteps = ddim_timesteps(sched, t_start, n_steps, to_zero=to_zero)
        stride = 1000 // ddim.num_inference_steps
        assert timesteps[0] == t_start and 1 <= len(timesteps) <= n_steps
        assert (timesteps[:-1] - timesteps[1:] == stride).all()
        assert ddim.config.set_alpha_to_one is to_zero
        if to_zero:  # down to step 0, then alpha-bar 1: the x0 estimate
            assert 0 <= timesteps[-1] < stride
            assert ddim.final_alpha_cumprod == 1
        else:  # truncated above 0, then alpha-bar_0
            assert 0 < timesteps[-1] <= stride
            assert ddim.final_alpha_cumprod == sched.alphas_cumprod[0] < 1


def test_the_endings_take_different_strides_where_documented():
    sched = ddpm.make_scheduler()
    to_zero = ddim_timesteps(sched, 400, 10)[1]
    truncated = ddim_timesteps(sched, 400, 10, to_zero=False)[1]
    assert to_zero.tolist() == list(range(400, -1, -41))  # 400, 359, ..., 31
    assert truncated.tolist() == list(range(400, 0, -40))  # 400, 360, ..., 40
    assert len(ddim_timesteps(sched, 0, 10, to_zero=False)[1]) == 0


def test_clip_sample_is_the_noise_schedulers_unless_given():
    sched = ddpm.make_scheduler()
    assert sched.config.clip_sample is True  # DDPMScheduler's default
    assert ddim_timesteps(sched, 400, 10)[0].config.clip_sample is True
    for clip in (True, False):
        ddim = ddim_timesteps(sched, 400, 10, to_zero=False, clip_sample=clip)[0]
        assert ddim.config.clip_sample is clip


def test_fewer_than_one_step_is_refused():
    with pytest.raises(ValueError, match="n_steps"):
        ddim_timesteps(ddpm.make_scheduler(), 400, 0)


def true_noise(x0: torch.Tensor, scheduler):
    """predict_noise for ddim_loop that returns the exact eps of x_t = forward(x0, eps)."""
    calls = []

    def predict_noise(x_t, t):
        calls.append(t.clone())
        abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    return predict_noise, calls


@pytest.mark.parametrize("t_start", [0, 37, 400, 999])
def test_ddim_loop_with_the_true_noise_recovers_x0_or_its_step_0_noising(t_start):
    sched = ddpm.make_scheduler()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(2, 3, 8, 8, generator=g)
    x_t = sched.add_noise(x0, eps, torch.tensor([t_start]))
    predict_noise, calls = true_noise(x0, sched)
    ddim, timesteps = ddim_timesteps(sched, t_start, 10)
    out = ddim_loop(predict_noise, x_t, ddim, timesteps, eta=0.0)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
    assert [c.tolist() for c in calls] == [[int(t)] * 2 for t in timesteps]
    if t_start == 0:
        return  # the truncated schedule has no timestep to denoise from
    ddim, timesteps = ddim_timesteps(sched, t_start, 10, to_zero=False)
    out = ddim_loop(predict_noise, x_t, ddim, timesteps, eta=0.0)
    abar0 = sched.alphas_cumprod[0]
    expected = abar0.sqrt() * x0 + (1 - abar0).sqrt() * eps  # x at timestep 0
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert not torch.allclose(out, x0, atol=1e-4, rtol=0)


def test_ddim_loop_with_eta_draws_its_noise_from_the_generator():
    sched = ddpm.make_scheduler()
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    x_t = sched.add_noise(x0, torch.randn_like(x0), torch.tensor([400]))
    predict_noise, _ = true_noise(x0, sched)
    ddim, timesteps = ddim_timesteps(sched, 400, 5, to_zero=False)

    def run(eta, seed):
        g = torch.Generator().manual_seed(seed)
        return ddim_loop(predict_noise, x_t, ddim, timesteps, eta=eta, generator=g)

    assert torch.equal(run(0.5, 1), run(0.5, 1))
    assert not torch.equal(run(0.5, 1), run(0.5, 2))
    assert torch.equal(run(0.0, 1), run(0.0, 2))  # eta = 0 draws nothing


def test_denoise_is_ddim_loop_on_chapter_2s_schedule():
    unet, sched = tiny_unet(), ddpm.make_scheduler()
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ddim, timesteps = ddim_timesteps(sched, 300, 4)
    with torch.no_grad():
        expected = ddim_loop(lambda x, t: unet(x, t).sample, x_t, ddim, timesteps)
    assert torch.equal(denoise(unet, sched, x_t, 300, 4), expected)


def test_predict_x0_inverts_the_forward_process_given_the_true_noise():
    sched = ddpm.make_scheduler()
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    t = torch.tensor([5, 500, 990])
    x_t = sched.add_noise(x0, torch.randn_like(x0), t)
    torch.testing.assert_close(ddpm.predict_x0(Oracle(x0, sched), sched, x_t, t), x0)


@pytest.mark.parametrize("t_start", [0, 250, 999])
def test_ddim_with_a_perfect_denoiser_reconstructs_the_image_exactly(t_start):
    sched, images = ddpm.make_scheduler(), smooth_images()
    oracle = Oracle(ddpm.to_model(images), sched)
    recon = reconstruct(oracle, sched, images, t_start, n_steps=10)
    torch.testing.assert_close(recon, images, atol=1e-4, rtol=0)


def test_reconstruction_from_t0_is_nearly_the_identity_even_untrained():
    unet, sched, images = tiny_unet(), ddpm.make_scheduler(), smooth_images()
    near = (reconstruct(unet, sched, images, 0) - images).abs().mean()
    far = (reconstruct(unet, sched, images, 800) - images).abs().mean()
    assert near < 0.02 < far


def test_reconstruction_is_deterministic_given_the_seed_and_keeps_the_shape():
    unet, sched, images = tiny_unet(), ddpm.make_scheduler(), smooth_images(2, size=32)
    a = reconstruct(unet, sched, images, 300, n_steps=4, seed=7)
    b = reconstruct(unet, sched, images, 300, n_steps=4, seed=7)
    c = reconstruct(unet, sched, images, 300, n_steps=4, seed=8)
    assert a.shape == images.shape and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sample_makes_images_in_range():
    out = sample(tiny_unet(), ddpm.make_scheduler(), n=2, size=16, n_steps=3)
    assert out.shape == (2, 3, 16, 16) and 0 <= out.min() and out.max() <= 1


def test_noising_frames_go_from_the_image_to_noise():
    sched, image = ddpm.make_scheduler(), smooth_images(1)[0]
    frames, x0_hat = ddpm.noising_frames(sched, image, [0, 500, 999])
    assert frames.shape == (3, 3, 16, 16) and x0_hat is None
    errors = [(f - image).abs().mean() for f in frames]
    assert errors[0] < 0.03 < errors[1] < errors[2]
    _, x0_hat = ddpm.noising_frames(sched, image, [0, 500], unet=tiny_unet())
    assert x0_hat.shape == (2, 3, 16, 16)


def test_add_defects_changes_only_the_masked_pixels():
    images = torch.rand(4, 3, 64, 64)
    clean, defective, masks = add_defects(images, seed=0, category="brick")
    assert clean.shape == defective.shape == images.shape and masks.shape == (4, 1, 64, 64)
    changed = (clean != defective).any(1, keepdim=True)
    assert torch.equal(changed, masks.bool())
    assert (clean - images).abs().max() <= 0.5 / 255 + 1e-6  # only quantised to 8 bits


def test_masked_mse_separates_errors_inside_and_outside_the_mask():
    clean = torch.zeros(1, 3, 4, 4)
    masks = torch.zeros(1, 1, 4, 4)
    masks[..., :2, :2] = 1
    recons = clean + 0.5 * masks + 0.1 * (1 - masks)
    inside, outside = masked_mse(recons, clean, masks)
    assert inside == pytest.approx(0.25) and outside == pytest.approx(0.01)


def test_reconstruction_errors_reward_a_repaint_and_blame_a_copy():
    from ccad_tutorial.reconstruction import reconstruction_errors

    clean = torch.full((2, 3, 16, 16), 0.5)
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:8, 4:8] = 1
    defective = torch.where(masks.bool().expand_as(clean), torch.zeros_like(clean), clean)
    repaint = reconstruction_errors(clean.clone(), clean, defective, masks)
    copy = reconstruction_errors(defective.clone(), clean, defective, masks)
    assert repaint["excess"] == 0.0 and repaint["pixel_auroc"] == 1.0  # defect removed
    assert copy["excess"] > 0.2 and copy["pixel_auroc"] == 0.5  # defect kept: nothing seen
    assert repaint["colour_error"] == 0.0 < copy["colour_error"]
    assert repaint["contrast"] == float("inf")  # exact outside: no division by zero
    assert math.isnan(copy["contrast"])  # the map is zero everywhere: no contrast at all
