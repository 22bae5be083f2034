"""The smallest CCAD settings the tests train with: 32 px images, a few channels, 2-step VAE.

One place for them, so every test file trains the same toy model (seconds per run on 2 CPU
cores) and a change to the presets' fields is made once. Import as ``from tiny_settings
import FAST`` (pytest puts ``tests/`` on ``sys.path``).
"""

FAST = dict(
    image_size=32,
    crop_size=16,
    batch_size=4,
    vae_steps=2,
    num_queries=8,
    checkpoint_every=2,
    block_out_channels=(16, 32, 32),
    norm_num_groups=8,
    cross_attention_dim=32,
    vae_block_out_channels=(16, 16, 16),
)
