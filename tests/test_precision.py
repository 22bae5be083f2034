"""The switches that trade precision or time for memory: mixed precision and checkpointing.

bf16 autocast trains on a CPU when asked for, fp16 is refused there with the fix, and
gradient checkpointing changes memory and time only, never the loss or the gradients.
"""

import math

import pytest
import torch
from safetensors.torch import load_file
from tiny_settings import FAST

from ccad_tutorial.accel import autocast_dtype
from ccad_tutorial.datasets import load_split
from ccad_tutorial.detectors import train_run
from ccad_tutorial.model import CCAD
from ccad_tutorial.presets import make_config
from ccad_tutorial.train import fit

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_is_bf16_on_cuda_and_full_precision_on_cpu():
    assert autocast_dtype("auto", CUDA) is torch.bfloat16
    assert autocast_dtype("auto", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16  # asked for explicitly
    assert autocast_dtype("fp16", CUDA) is torch.float16
    assert autocast_dtype("no", CUDA) is None


def test_fp16_on_cpu_is_refused_naming_the_field_and_the_fix(minitex_root, tmp_path):
    with pytest.raises(ValueError, match="mixed_precision='fp16' needs a CUDA GPU.*bf16"):
        train_run(minitex_root, "brick", tmp_path / "r", steps=1, progress=False,
                  device="cpu", mixed_precision="fp16", **FAST)  # fmt: skip
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_an_unknown_mixed_precision_is_refused():
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        make_config("tiny", "F", mixed_precision="float16")


def test_bf16_on_cpu_trains_and_saves_float32_weights(minitex_root, tmp_path):
    small = {k: v for k, v in FAST.items() if k != "vae_steps"}
    cfg = make_config("tiny", "C", mixed_precision="bf16", scaling_factor=1.0, **small)
    cfg.steps = 3
    torch.manual_seed(0)
    model = CCAD(cfg, torch.randn(8, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = load_split(minitex_root, "mvtec", "brick", "train", 32).images
    summary = fit(model, images, tmp_path, progress=False)
    assert math.isfinite(summary["last_loss"])
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in saved.values() if w.is_floating_point())
    trained = [k for k in saved if k.startswith("unet.up_blocks")]
    assert trained and all(not torch.equal(saved[k], before[k]) for k in trained if "weight" in k)


def loss_and_grads(checkpointing: bool) -> tuple[torch.Tensor, dict]:
    small = {k: v for k, v in FAST.items() if k not in ("vae_steps", "checkpoint_every")}
    cfg = make_config("tiny", "C", scaling_factor=1.0, guidance="full",
                      gradient_checkpointing=checkpointing, **small)  # fmt: skip
    torch.manual_seed(0)
    model = CCAD(cfg, torch.randn(8, 16)).train()
    model.freeze()
    for net in (model.unet, model.controlnet):
        assert net.is_gradient_checkpointing == checkpointing
    images = torch.rand(2, 3, 32, 32)
    loss = model(model.encode(images), images, torch.Generator().manual_seed(0))
    loss.backward()
    return loss, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_keeps_the_loss_and_the_gradients():
    loss, grads = loss_and_grads(False)
    loss_ckpt, grads_ckpt = loss_and_grads(True)
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-4, atol=1e-6)
