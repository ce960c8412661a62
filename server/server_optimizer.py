"""The server's step on the securely averaged update of a BigBiGAN round.

SecAgg+ gives the server the sites' mean update (delta) and nothing else; the
strategies differ only in what the server does with it:
- FedAvg (and FedProx, FedBN): w + delta.
- FedAvgM (Hsu et al. 2019): v = momentum v + delta; w + lr v.
- FedAdam (Reddi et al. 2021): Adam's moments of delta; w + lr m / (sqrt(v) + tau).
Only trainable arrays take the optimiser's step: BatchNorm's running statistics
and spectral norm's power-iteration vectors are estimates, not parameters, so
they take the plain average. The optimiser's state is part of the checkpoint.
"""

from __future__ import annotations

import numpy as np

from common.config import RunConfig


def initial_state(config: RunConfig, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Zeroed optimiser state for the federated `arrays`: [] (FedAvg), the
    velocities (FedAvgM), or first then second moments (FedAdam)."""
    copies = {"fedavgm": 1, "fedadam": 2}.get(config.strategy, 0)
    return [np.zeros_like(a, dtype=np.float32) for _ in range(copies) for a in arrays]


def server_step(
    config: RunConfig,
    weights: list[np.ndarray],
    delta: list[np.ndarray],
    trainable: list[bool],
    state: list[np.ndarray],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """New federated weights and optimiser state after one round's mean `delta`."""
    opt = config.server_opt
    n = len(weights)
    if config.strategy == "fedavgm":
        velocity = [
            opt.avgm_momentum * v + d if t else v
            for v, d, t in zip(state, delta, trainable, strict=True)
        ]
        pairs = zip(velocity, delta, trainable, strict=True)
        steps = [opt.avgm_lr * v if t else d for v, d, t in pairs]
        new_state = velocity
    elif config.strategy == "fedadam":
        m_old, v_old = state[:n], state[n:]
        b1, b2 = opt.adam_beta1, opt.adam_beta2
        m = [b1 * m + (1 - b1) * d for m, d in zip(m_old, delta, strict=True)]
        v = [b2 * v + (1 - b2) * d * d for v, d in zip(v_old, delta, strict=True)]
        steps = [
            opt.adam_lr * mi / (np.sqrt(vi) + opt.adam_tau) if t else d
            for mi, vi, d, t in zip(m, v, delta, trainable, strict=True)
        ]
        new_state = m + v
    else:
        steps, new_state = list(delta), state
    new = [(w + s).astype(np.float32) for w, s in zip(weights, steps, strict=True)]
    return new, [s.astype(np.float32) for s in new_state]
