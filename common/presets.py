"""The model presets: each network size a run can name (ModelPreset, PRESETS)."""

from __future__ import annotations

from dataclasses import dataclass

Z_DIM = 120  # BigBiGAN's latent size; the paper's features are this z_mean


@dataclass(frozen=True)
class ModelPreset:
    """Sizes of E, G and D. E sees `image_size`; G makes and D judges `gd_size`.

    E is a pre-activation ResNet-v2 with bottleneck units (`enc_units` per stage,
    bottleneck depth `enc_depths`, output 4x depth) and an MLP head. G and D are
    BigGAN's: channel multipliers of `gen_ch` / `disc_ch` per block, optional
    self-attention at one resolution. H and J are MLPs with skip connections.
    """

    name: str
    image_size: int
    gd_size: int
    z_dim: int = Z_DIM
    enc_stem: int = 16
    enc_depths: tuple[int, ...] = (16, 32, 64)
    enc_units: tuple[int, ...] = (1, 1, 1)
    enc_mlp: int = 128
    enc_mlp_layers: int = 2
    gen_ch: int = 32
    gen_mults: tuple[int, ...] = (8, 4, 2, 1)  # the 4x4 input, then one per up-block
    gen_attention: int = 0  # resolution of G's self-attention block; 0 = none
    disc_ch: int = 16
    disc_mults: tuple[int, ...] = (1, 2, 4, 4)  # one per block; the last keeps size
    disc_attention: int = 0
    disc_mlp: int = 128
    disc_mlp_layers: int = 2


PRESETS: dict[str, ModelPreset] = {
    # tests: seconds on a CPU
    "tiny": ModelPreset("tiny", image_size=64, gd_size=32),
    # CPU demo: minutes per site
    "small": ModelPreset(
        "small",
        image_size=128,
        gd_size=64,
        enc_stem=32,
        enc_depths=(16, 32, 64, 128),
        enc_units=(1, 1, 2, 1),
        enc_mlp=256,
        gen_ch=32,
        gen_mults=(8, 8, 4, 2, 1),
        disc_ch=32,
        disc_mults=(1, 2, 4, 8, 8),
        disc_mlp=256,
    ),
    # the study's model: ResNet-v2-50 E at 256 px, BigGAN-128 G and D (GPUs)
    "paper": ModelPreset(
        "paper",
        image_size=256,
        gd_size=128,
        enc_stem=64,
        enc_depths=(64, 128, 256, 512),
        enc_units=(3, 4, 6, 3),
        enc_mlp=4096,
        enc_mlp_layers=3,
        gen_ch=96,
        gen_mults=(16, 16, 8, 4, 2, 1),
        gen_attention=64,
        disc_ch=96,
        disc_mults=(1, 2, 4, 8, 16, 16),
        disc_attention=64,
        disc_mlp=2048,
        disc_mlp_layers=8,
    ),
}
