"""Real Flower 1.42 processes on 127.0.0.1: a SuperLink with TLS (our PKI) and
SuperNode authentication. An unregistered key is refused; a client without the
federation's CA cannot connect; 2 training SuperNodes and 1 external one run
the study with `flwr run` and the run writes its metrics. Every process is
stopped by PID (its process group) when the module ends."""

import json
import re
import subprocess
from pathlib import Path

import pytest
from deployment_harness import FEDERATION, Federation

from client.doctor import check_superlink
from common.pki import init_pki


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("deployment"))
    try:
        fed.start_superlink()
        yield fed
    finally:
        fed.stop()


def refused(node, pattern: str, timeout: float = 90) -> str:
    """The SuperNode exits on its own, non-zero, with `pattern` in its log."""
    code = node.wait(timeout)
    log = node.text()
    assert code != 0, log[-2000:]
    assert pattern in log, log[-2000:]
    return log


def test_unregistered_key_and_missing_ca_are_refused(federation, tmp_path):
    intruder = federation.start_supernode(
        "intruder", federation.add_site("intruder", register=False)
    )
    registered = federation.add_site("no_ca_site")  # on the allow-list...
    no_ca = federation.start_supernode("no-ca", registered, root_certificates=False)
    init_pki(tmp_path / "other", "localhost,127.0.0.1")
    foreign = federation.start_supernode(
        "foreign-ca", registered, root_certificates=tmp_path / "other" / "ca.crt"
    )
    refused(intruder, "Failed to activate SuperNode")
    for node in (no_ca, foreign):  # ...but cannot verify the SuperLink
        refused(node, "CERTIFICATE_VERIFY_FAILED")
    # the SuperLink admitted none of them
    assert "Activated node_id" not in federation.processes[0].text()


def test_coordinator_without_the_ca_cannot_connect(federation, tmp_path):
    env = {**federation.env, "FLWR_HOME": str(tmp_path / "home"), "COLUMNS": "250"}
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\n'
        f'address = "{federation.address}"\n'
    )
    done = subprocess.run(
        ["flwr", "supernode", "list", FEDERATION],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # the flwr CLI says only this (the TLS verification error is not shown)
    assert done.returncode != 0
    assert "Connection to the SuperLink is unavailable" in done.stdout + done.stderr
    # with the CA it works (the harness's own config): it was the CA
    done = subprocess.run(
        ["flwr", "supernode", "list", FEDERATION, "--format", "json"],
        env=federation.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # and the doctor's TLS check agrees with the real SuperLink
    ca = federation.pki / "ca.crt"
    assert check_superlink(federation.address, ca).status == "ok"
    assert check_superlink(f"localhost:{federation.port}", ca).status == "ok"
    assert check_superlink(federation.address, tmp_path / "none.crt").failed


@pytest.mark.slow
def test_two_hospitals_and_an_external_site_run_the_study(federation, tmp_path):
    """The whole app over TLS with authenticated nodes. The encoder is frozen
    (no BigBiGAN rounds) to keep to ~4 min here: 3 SecAgg+ rounds of 4 stages,
    each message a fresh ClientApp process on a 2-core machine."""
    from simulations.phantoms import write_study

    sites = write_study(tmp_path / "data", 0.3, 0, 2)
    nodes = []
    for name, role in (
        ("hospital_a_ge", "train"),
        ("hospital_a_neuviz", "train"),
        ("hospital_b", "external"),
    ):
        node_config = (
            f'data-dir="{sites[name]}" role="{role}" '
            f'cache-dir="{tmp_path / "cache" / name}"'
        )
        key = federation.add_site(name)
        nodes.append(federation.start_supernode(name, key, node_config))
    for node in nodes:
        node.wait_for(r"SuperNode ID: \d+", timeout=90)
    out = tmp_path / "run"
    run_config = (
        'preset="tiny" encoder-mode="frozen" logit-rounds=0 '
        f'secagg-timeout=240.0 out-dir="{out}"'
    )
    run = federation.start(
        "flwr-run",
        ["flwr", "run", ".", FEDERATION, "--stream", "--run-config", run_config],
        cwd=str(Path(__file__).resolve().parents[1]),  # the app: this checkout
    )
    code = run.wait(timeout=600)
    log = run.text()
    assert code == 0, log[-4000:]
    assert "Successfully started run" in log
    sites_line = re.search(r"sites: \{[^}]*\}", log)
    assert sites_line, log[-4000:]
    assert sorted(re.findall(r"'(\w+)'", sites_line.group(0))) == [
        "external",
        "train",
        "train",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"train", "val", "test", "external"} <= set(metrics["splits"])
    assert metrics["train_message_roles"] == ["train"]  # external never trained
    assert metrics["secure_eval_sites"] == 2
    for node in nodes:
        assert node.proc.poll() is None, node.text()[-2000:]  # still serving
