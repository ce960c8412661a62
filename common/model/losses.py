"""BiGAN hinge losses on the three discriminator scores (s_x, s_z, s_xz)."""

from __future__ import annotations

from keras import ops


def discriminator_loss(real_scores, fake_scores):
    """D: sum over scores of mean hinge; real pairs (x, E(x)) want s >= 1."""
    return sum(
        ops.mean(ops.relu(1.0 - real)) + ops.mean(ops.relu(1.0 + fake))
        for real, fake in zip(real_scores, fake_scores, strict=True)
    )


def encoder_generator_loss(real_scores, fake_scores):
    """E and G: summed scores signed by the pair (E pushes its down, G its up)."""
    real = sum(ops.mean(s) for s in real_scores)
    fake = sum(ops.mean(s) for s in fake_scores)
    return real, -fake
