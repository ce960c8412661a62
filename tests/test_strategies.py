"""Strategies of the BigBiGAN rounds: FedProx's local term and the server's
optimiser (FedAvgM, FedAdam) on the securely averaged update."""

import dataclasses

import numpy as np
import pytest

from common.config import (
    ConfigError,
    RunConfig,
    ServerOptConfig,
    TrainConfig,
    get_preset,
)
from common.model.gan_training import BigBiGAN
from server.server_optimizer import initial_state, server_step

IMAGES = np.random.default_rng(0).uniform(-1, 1, (8, 64, 64, 3)).astype("float32")


def _trained(proximal: tuple[str, ...], mu: float) -> tuple[BigBiGAN, list, list]:
    """The model, its start and its end weights after one local epoch (2 steps)
    from the same start and seed."""
    model = BigBiGAN(get_preset("tiny"), seed=0)
    start = model.get_weights()
    model.train_epochs(
        IMAGES, TrainConfig(batch_size=4, fedprox_mu=mu), seed=3, proximal=proximal
    )
    return model, start, model.get_weights()


def test_fedprox_at_mu_0_is_fedavg_and_a_large_mu_holds_its_parts_near_the_global():
    model, start, fedavg = _trained((), 0.0)
    _, _, prox_0 = _trained(("e", "g", "d"), 0.0)
    for a, b in zip(fedavg, prox_0, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit, with the term present

    n_e = len(model.encoder.weights)
    trainable = [v.trainable for v in model.variables]

    def drift(weights, encoder: bool) -> float:
        """Squared distance from the start over E's (or G's and D's) parameters."""
        return sum(
            float(np.sum((w - s) ** 2))
            for i, (w, s) in enumerate(zip(weights, start, strict=True))
            if trainable[i] and (i < n_e) == encoder
        )

    # Adam's first step ignores scale (w = w_global there, the term is 0); on
    # the second, mu (w - w_global) ~ 1e4 * 2e-4 outweighs the GAN gradients
    # (order 1e-2) and turns E back towards the global weights
    _, _, prox_e = _trained(("e",), 1e4)
    assert drift(prox_e, encoder=True) < 0.5 * drift(fedavg, encoder=True)
    assert drift(prox_e, encoder=False) > 0.5 * drift(fedavg, encoder=False)


def _config(strategy: str, **opt) -> RunConfig:
    return RunConfig(strategy=strategy, server_opt=ServerOptConfig(**opt))


def test_fedavgm_without_momentum_at_rate_1_is_fedavg_and_momentum_accumulates():
    rng = np.random.default_rng(1)
    w = [rng.normal(size=(3, 2)).astype(np.float32), np.ones(2, np.float32)]
    deltas = [
        [rng.normal(size=a.shape).astype(np.float32) for a in w] for _ in range(3)
    ]
    trainable = [True, False]  # e.g. a kernel and a BN running mean
    plain = _config("fedavgm", avgm_momentum=0.0)
    state, ws = initial_state(plain, w), w
    avg = w
    for d in deltas:
        ws, state = server_step(plain, ws, d, trainable, state)
        avg, _ = server_step(_config("fedavg"), avg, d, trainable, [])
    for a, b in zip(ws, avg, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)

    cfg = _config("fedavgm", avgm_momentum=0.5, avgm_lr=1.0)
    state, ws = initial_state(cfg, w), w
    for d in deltas[:2]:
        ws, state = server_step(cfg, ws, d, trainable, state)
    expected = w[0] + deltas[0][0] + (0.5 * deltas[0][0] + deltas[1][0])
    np.testing.assert_allclose(ws[0], expected, atol=1e-5)
    # running statistics take the plain average, never the momentum
    np.testing.assert_allclose(ws[1], w[1] + deltas[0][1] + deltas[1][1], atol=1e-6)


def test_fedadam_follows_reddi_et_al():
    w = [np.zeros(4, np.float32)]
    d = [np.array([1.0, -2.0, 0.5, 0.0], np.float32)]
    cfg = _config(
        "fedadam", adam_lr=0.1, adam_beta1=0.9, adam_beta2=0.99, adam_tau=1e-3
    )
    state = initial_state(cfg, w)
    assert len(state) == 2
    new, state = server_step(cfg, w, d, [True], state)
    m, v = 0.1 * d[0], 0.01 * d[0] ** 2
    np.testing.assert_allclose(new[0], 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)
    np.testing.assert_allclose(state[0], m, rtol=1e-6)
    np.testing.assert_allclose(state[1], v, rtol=1e-6)


def test_strategy_keys_round_trip_and_bad_values_are_named():
    cfg = RunConfig(
        strategy="fedadam",
        server_opt=ServerOptConfig(adam_lr=0.05),
        train=dataclasses.replace(TrainConfig(), fedprox_mu=0.1),
    )
    flat = cfg.to_flat()
    assert flat["strategy"] == "fedadam" and flat["server-adam-lr"] == 0.05
    assert flat["fedprox-mu"] == 0.1
    assert RunConfig.from_flat(flat) == cfg
    with pytest.raises(ConfigError, match="strategy must be one of"):
        RunConfig.from_flat({**flat, "strategy": "scaffold"})
    with pytest.raises(ConfigError, match="fedprox-mu"):
        RunConfig.from_flat({**flat, "fedprox-mu": -1.0})


def _shapes_recorder(log_dir, where: str):
    """A mod writing down the array shapes of every message passing it, both
    ways (to files: the Simulation Engine runs clients in other processes)."""
    import json

    def shapes(message) -> list:
        if not message.has_content():
            return []
        # the arrays' own shapes: legacy (NumPyClient) records leave Array.shape
        # empty and keep the shape in the serialised bytes
        return [
            list(np.asarray(a.numpy()).shape)
            for record in message.content.array_records.values()
            for a in record.values()
        ]

    def mod(msg, context, call_next):
        entries = [{"where": where, "way": "in", "shapes": shapes(msg)}]
        reply = call_next(msg, context)
        entries.append({"where": where, "way": "out", "shapes": shapes(reply)})
        with (log_dir / f"{where}-{context.node_id}.jsonl").open("a") as handle:
            handle.writelines(json.dumps(e) + "\n" for e in entries)
        return reply

    return mod


@pytest.mark.simulation
@pytest.mark.extended
def test_fedbn_never_sends_batchnorm_values(tmp_path):
    import json

    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp

    from client.client_app import client_fn
    from common.evaluation import feature_kinds
    from common.model.model_parts import federated_indices, is_batchnorm
    from simulations.simulate import simulate

    config = RunConfig(gan_rounds=2, logit_rounds=1, strategy="fedbn")
    log_dir = tmp_path / "messages"
    log_dir.mkdir()
    # outer: what crosses the network; inner: what the client hands SecAgg+
    app = ClientApp(
        client_fn=client_fn,
        mods=[
            _shapes_recorder(log_dir, "wire"),
            secaggplus_mod,
            _shapes_recorder(log_dir, "plain"),
        ],
    )
    out = tmp_path / "run"
    metrics = simulate(out, config, scale=0.15, slices_per_patient=2, client_app=app)

    log = [
        json.loads(line)
        for f in log_dir.glob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert len(log) > 40  # every phase's messages, both ways, at 3 sites
    model = BigBiGAN(config.model, seed=0)
    paths = [v.path for v in model.variables]
    weights = model.get_weights()
    shared = federated_indices(model, "egd", "fedbn")
    bn = [i for i, p in enumerate(paths) if is_batchnorm(p)]
    assert len(bn) > 20 and not set(bn) & set(shared)
    assert len(shared) + len(bn) == len(federated_indices(model, "egd"))
    shared_shapes = [list(weights[i].shape) for i in shared]
    shared_values = sum(weights[i].size for i in shared)
    # every BigBiGAN update handed to SecAgg+ is exactly the non-BatchNorm arrays
    gan_replies = [
        e
        for e in log
        if e["where"] == "plain"
        and e["way"] == "out"
        and len(e["shapes"]) == len(shared)
    ]
    assert len(gan_replies) == 2 * 2  # 2 training sites x 2 rounds
    assert all(e["shapes"] == shared_shapes for e in gan_replies)
    # and no message either way, masked or not, is big enough to hold more
    # (later phases send E with every head's vector: the model's and the
    # baselines', `common.evaluation.feature_kinds`, two heads of dim + 1 values
    # per kind)
    head_values = sum(
        len(feature_kinds.HEADS) * (feature_kinds.dim(kind, config.model.z_dim) + 1)
        for kind in feature_kinds.KINDS
    )
    assert sum(weights[i].size for i in bn) > 5 * head_values
    for entry in log:
        values = sum(int(np.prod(s)) for s in entry["shapes"])
        assert values <= shared_values + head_values, entry
    assert metrics["payload"]["federated_values"] == shared_values
    # the sites keep their BatchNorm arrays (with any other kept part) at home
    kept = sorted((out / "ingest-cache").rglob("local-*-r0002.npz"))
    assert len(kept) == 2
    with np.load(kept[0]) as data:
        assert len(data.files) == len(bn)
    # the external site scored with its own AdaBN statistics: a real AUC
    assert 0.0 <= metrics["splits"]["external"]["auc"] <= 1.0
    assert metrics["splits"]["external"]["n_patients"] > 0
