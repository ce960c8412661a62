"""Privacy modes end to end in the Simulation Engine: the generator stays home
(only E leaves a site) and DP noise is added before SecAgg+ masks an update."""

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from client.client_app import client_fn
from common.config import RunConfig
from common.model.gan_training import BigBiGAN
from common.model.model_parts import part_ranges
from simulations.simulate import simulate


def _recorder(log_dir: Path, name: str):
    """A mod that writes down every array of every message passing it."""

    def mod(msg, context, call_next):
        reply = call_next(msg, context)
        if reply.has_content():
            arrays = [
                np.asarray(a.numpy())
                for record in reply.content.array_records.values()
                for a in record.values()
            ]
            entry = {
                "stage": msg.content.config_records.get("secaggplus", {}).get(
                    "stage", ""
                ),
                "sizes": [int(a.size) for a in arrays],
                "rms": float(
                    np.sqrt(
                        np.mean(
                            np.concatenate([a.ravel() for a in arrays]).astype(
                                np.float64
                            )
                            ** 2
                        )
                    )
                )
                if arrays
                else 0.0,
            }
            path = log_dir / f"{name}-{context.node_id}.jsonl"
            with path.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
        return reply

    return mod


@pytest.mark.simulation
@pytest.mark.slow
def test_generator_stays_home_and_dp_noise_comes_before_masking(tmp_path):
    config = RunConfig(
        gan_rounds=2,
        logit_rounds=0,
        federated_parts="e",
        dp_noise_multiplier=1.0,
        dp_clip=0.02,
    )
    log_dir = tmp_path / "messages"
    log_dir.mkdir()
    # outer: what leaves the node; inner: what the client hands SecAgg+ to mask
    app = ClientApp(
        client_fn=client_fn,
        mods=[
            _recorder(log_dir, "out"),
            secaggplus_mod,
            _recorder(log_dir, "in"),
        ],
    )
    out = tmp_path / "run"
    metrics = simulate(out, config, scale=0.2, slices_per_patient=2, client_app=app)

    ranges = part_ranges(BigBiGAN(config.model, seed=0))
    weights = BigBiGAN(config.model, seed=0).get_weights()
    e_values = sum(weights[i].size for i in ranges["e"])
    all_values = sum(w.size for w in weights)
    assert metrics["payload"]["federated_values"] == e_values < all_values / 2
    outgoing = [
        json.loads(line)
        for f in log_dir.glob("out-*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert outgoing, "the recorder saw no message"
    # no message from any site ever carries more values than E has: no G, no D
    assert max(sum(e["sizes"]) for e in outgoing) <= e_values + 1
    # the sites kept G and D at home, on their disk, per round
    kept = sorted(p.name for p in (out / "ingest-cache").rglob("local-*.npz"))
    assert len(kept) == 4 and all("-r0001" in k or "-r0002" in k for k in kept)
    assert not (out / "samples").exists()  # the server has no G to sample
    # DP: the update handed to SecAgg+ is the clipped update plus noise of sd
    # sigma * clip / sqrt(2 sites); the clipped signal (norm <= 0.02 over ~10^5
    # values) is far below it, so the values' rms is the noise's sd
    handed = [
        json.loads(line)
        for f in log_dir.glob("in-*.jsonl")
        for line in f.read_text().splitlines()
    ]
    gan = [e for e in handed if sum(e["sizes"]) == e_values]
    assert len(gan) == 4  # 2 sites x 2 rounds
    for entry in gan:
        assert entry["rms"] == pytest.approx(1.0 * 0.02 / np.sqrt(2), rel=0.02)
    dp = metrics["dp"]
    assert dp["on"] and dp["rounds"] == 2 and 0 < dp["epsilon"] < np.inf
    assert all("d_loss" not in r for r in metrics["rounds"])  # no per-site losses
    attack = metrics["membership_inference"]
    assert attack["n_members"] > 0 and attack["n_nonmembers"] > 0
    assert 0.0 <= attack["head_attack_auc"] <= 1.0
    assert attack["discriminator_attack_auc"] is None  # D never left the sites
