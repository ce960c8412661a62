"""Real Flower 1.42 processes on 127.0.0.1: a SuperLink with TLS (our PKI) and
SuperNode authentication. An unregistered key is refused; a client without the
federation's CA cannot connect; 2 training SuperNodes and 1 external one run
the study with `flwr run` and the run writes its metrics. Every process is
stopped by PID (its process group) when the module ends."""

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import tomllib
from deployment_harness import FEDERATION, Federation, free_port

from client.doctor import check_superlink
from common.privacy.pki import init_pki


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
    link_log = len(federation.processes[0].text())
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
    assert "Activated node_id" not in federation.processes[0].text()[link_log:]


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


def test_pki_register_puts_keys_on_the_allow_list_once(federation, monkeypatch, capsys):
    from common.commands import main

    for key in ("FLWR_HOME", "FLWR_TELEMETRY_ENABLED", "FLWR_DISABLE_UPDATE_CHECK"):
        monkeypatch.setenv(key, federation.env[key])
    monkeypatch.setenv("COLUMNS", "250")
    federation.add_site("late_a", register=False)
    federation.add_site("late_b")  # already on the list
    pki = str(federation.pki)
    assert main(["pki", "register", FEDERATION, "late_a", "late_b", "--pki", pki]) == 0
    out = capsys.readouterr().out
    assert "late_a: registered as node" in out and "late_b: already registered" in out
    federation.add_site("late_c", register=False)
    monkeypatch.setenv("FLWR_HOME", str(federation.root / "nowhere"))
    assert main(["pki", "register", FEDERATION, "late_c", "--pki", pki]) == 1
    assert "late_c: not registered" in capsys.readouterr().out


@pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed")
def test_edge_admits_nodes_and_refuses_the_control_api(federation):
    """deploy/edge-nginx.conf in front of the real SuperLink: a registered node
    joins through it; the coordinator's Control API is not reachable through it."""
    edge_port = free_port()
    root = federation.root / "edge"
    root.mkdir()
    conf = (DEPLOY / "edge-nginx.conf").read_text()
    for old, new in (
        ("server superlink:8000;", f"server 127.0.0.1:{federation.port};"),
        ("listen 8443", f"listen 127.0.0.1:{edge_port}"),
        ("proxy_ssl_name superlink;", "proxy_ssl_name localhost;"),
        ("/pki/", f"{federation.pki}/"),
        ("/tmp/edge-nginx", str(root / "nginx")),
    ):
        assert old in conf, old
        conf = conf.replace(old, new)
    (root / "edge.conf").write_text(conf)
    edge = federation.start(
        "edge", ["nginx", "-c", str(root / "edge.conf"), "-g", "daemon off;"]
    )
    edge_address = f"127.0.0.1:{edge_port}"
    ca = federation.pki / "ca.crt"
    for _ in range(50):  # nginx is up when /health answers through it
        if check_superlink(edge_address, ca, timeout=2).status == "ok":
            break
        assert edge.proc.poll() is None, edge.text()
        time.sleep(0.2)
    assert check_superlink(edge_address, ca).status == "ok"
    node = federation.start_supernode(
        "via-edge", federation.add_site("via_edge"), superlink=edge_address
    )
    node.wait_for(r"SuperNode ID: \d+", timeout=90)
    home = root / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "edge"\n\n[superlink.edge]\n'
        f'address = "{edge_address}"\nroot-certificates = "{ca}"\n'
    )
    env = {**federation.env, "FLWR_HOME": str(home), "COLUMNS": "250"}
    done = subprocess.run(
        ["flwr", "supernode", "list", "edge"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0, done.stdout
    node.stop()
    edge.stop()


@pytest.mark.slow
def test_two_hospitals_and_an_external_site_run_the_study(
    federation, tmp_path, phantom_study
):
    """The whole app over TLS with authenticated nodes. The encoder is frozen
    (no BigBiGAN rounds) to keep to ~4 min here: 3 SecAgg+ rounds of 4 stages,
    each message a fresh ClientApp process on a 2-core machine."""
    data = phantom_study(0.3, 2)  # read-only: each node's cache is its own
    nodes = []
    for name, role in (
        ("hospital_a_ge", "train"),
        ("hospital_a_neuviz", "train"),
        ("hospital_b", "external"),
    ):
        node_config = (
            f'data-dir="{data / name}" role="{role}" '
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
    # each node's role reply carried its shortcut AUC through the wire audit;
    # one scanner per phantom site predicts nothing, so no warning
    shortcuts = metrics["site_shortcuts"]
    assert sorted(s["role"] for s in shortcuts) == ["external", "train", "train"]
    assert all(0.0 <= s["auc"] < 0.8 for s in shortcuts), shortcuts
    assert "shortcut:" not in log
    assert metrics["secure_eval_sites"] == 2
    # a deployed run has its baselines too, fitted in the same secure rounds
    assert set(metrics["baselines"]) == {"radiomics", "untrained"}
    for kind, entry in metrics["baselines"].items():
        for head in ("lm", "ridge"):
            external = entry[head]["splits"]["external"]
            assert 0.0 <= external["auc"] <= 1.0 and external["n_patients"] > 0, kind
            assert set(entry["external_difference"][head]) == {"diff", "diff_ci", "p"}
    for node in nodes:
        assert node.proc.poll() is None, node.text()[-2000:]  # still serving


# --- deploy/: compose files, Kubernetes manifests and the edge, checked without
# Docker or a cluster (neither exists on the development machine) ---

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
HOSPITALS = {"hospital-a": "train", "hospital-a2": "train", "hospital-b": "external"}


def _yaml(path: Path):
    import yaml

    return list(yaml.safe_load_all(path.read_text()))


def _superlink_args(argv: list[str]):
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

    assert argv[0] == "flower-superlink"
    return _parse_args_run_superlink().parse_args(argv[1:])


def _supernode_args(argv: list[str]):
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    assert argv[0] == "flower-supernode"
    return _parse_args_run_supernode().parse_args(argv[1:])


def _fedbigbigan_args(argv: list[str]):
    from common.commands import build_parser

    assert argv[0] == "fedbigbigan"
    return build_parser().parse_args(argv[1:])


def _mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """container path -> (source, read-only) of a compose service's volumes."""
    out = {}
    for spec in service.get("volumes", []):
        source, rest = "", spec
        if spec.startswith("${"):  # ${VAR:?message} may hold colons itself
            end = spec.index("}") + 1
            source, rest = spec[:end], spec[end:].lstrip(":")
        parts = rest.split(":")
        if not source:
            source, parts = parts[0], parts[1:]
        out[parts[0]] = (source, parts[-1] == "ro" and len(parts) > 1)
    return out


def _check_node_config(path: Path, role: str) -> None:
    from flwr.common.config import parse_config_args

    from client.doctor import NODE_CONFIG_KEYS

    config = parse_config_args([str(path)])
    # the roster's signing keys are optional (a federation with a roster)
    assert {"data-dir", "role", "cache-dir"} <= set(config), path
    assert set(config) <= set(NODE_CONFIG_KEYS), path
    assert config["role"] == role and config["data-dir"] == "/data", path


def test_compose_federation_is_consistent():
    base = DEPLOY / "docker"
    (compose,) = _yaml(base / "compose.yaml")
    services = compose["services"]
    workers = {f"{name}-worker" for name in HOSPITALS}
    assert set(services) == {"superlink", "register", *HOSPITALS, *workers}
    link = _superlink_args(services["superlink"]["command"])
    assert link.enable_supernode_auth and not link.insecure
    assert link.database and link.runtime_dependency_install is False
    mounts = _mounts(services["superlink"])
    for flag in (link.ssl_ca_certfile, link.ssl_certfile, link.ssl_keyfile):
        assert any(flag.startswith(target) for target in mounts), flag
    # published on the host's loopback only: the Control API shares the port
    (published,) = services["superlink"]["ports"]
    host, _, rest = published.partition(":")
    assert host == "127.0.0.1" and rest == "8000:8000", published
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)

    register = _fedbigbigan_args(services["register"]["command"])
    assert (register.pki_command, register.federation) == ("register", "hospitals")
    reg_mounts = _mounts(services["register"])
    assert "/pki/allow-list" in reg_mounts and not any(
        "sites" in source or "ca.key" in source for source, _ in reg_mounts.values()
    ), "the register service sees public keys only"
    flwr_config = tomllib.loads((base / "flwr-config.toml").read_text())
    connection = flwr_config["superlink"][register.federation]
    assert connection["address"] == "superlink:8000"
    assert connection["root-certificates"] in reg_mounts

    for name, role in HOSPITALS.items():
        service = services[name]
        node = _supernode_args(service["command"])
        assert node.superlink == "superlink:8000" and not node.insecure
        mounts = _mounts(service)
        assert node.root_certificates in mounts
        key_source, key_ro = mounts[node.auth_supernode_private_key]
        assert key_ro and key_source.startswith("./pki/sites/")
        data_source, data_ro = mounts["/data"]
        assert data_ro, f"{name}: the site's data must be mounted read-only"
        config_source, _ = mounts[node.node_config]
        _check_node_config(base / config_source, role)
        assert "ports" not in service, f"{name} must not listen for anything"
        assert service["depends_on"]["register"]["condition"] == (
            "service_completed_successfully"
        )
        for source, _ in mounts.values():
            if not source.startswith(("./", "/", "$")):
                assert source in compose["volumes"], source
        # its site worker: the same node config, data read-only, the same cache,
        # the socket's volume shared with this SuperNode alone, no network
        worker = services[f"{name}-worker"]
        args = _fedbigbigan_args(worker["command"])
        assert args.command == "site-worker" and worker["network_mode"] == "none"
        assert args.node_config == node.node_config
        worker_mounts = _mounts(worker)
        assert worker_mounts[node.node_config] == mounts[node.node_config]
        assert worker_mounts["/data"] == mounts["/data"] and mounts["/data"][1]
        assert worker_mounts["/cache"] == mounts["/cache"]
        socket_volume = worker_mounts["/run/fedbigbigan"]
        assert mounts["/run/fedbigbigan"] == socket_volume
        sharing = [
            n for n, s in services.items() if socket_volume in _mounts(s).values()
        ]
        assert sorted(sharing) == sorted([name, f"{name}-worker"])
        assert node.auth_supernode_private_key not in worker_mounts
        node_config = tomllib.loads((base / config_source).read_text())
        assert node_config["site-worker-socket"].startswith("/run/fedbigbigan/")
    for service in services.values():
        for source, _ in _mounts(service).values():
            if source.startswith("./") and not source.startswith(("./pki", "./runs")):
                assert (base / source).exists(), source


def test_compose_gpu_and_hospital_files():
    base = DEPLOY / "docker"
    (compose,) = _yaml(base / "compose.yaml")
    (gpu,) = _yaml(base / "compose.gpu.yaml")
    workers = {f"{name}-worker" for name in HOSPITALS}
    assert set(gpu["services"]) == {*HOSPITALS, *workers}
    for service in gpu["services"].values():
        assert service["build"]["args"]["EXTRAS"] == "[gpu]"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    extras = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    gpu_extra = extras["project"]["optional-dependencies"]["gpu"]
    assert any(dep.startswith("tensorflow[and-cuda]") for dep in gpu_extra)

    (hospital,) = _yaml(base / "compose.hospital.yaml")

    def expand(argv):
        return [
            re.sub(r"\$\{SUPERLINK:\?[^}]*\}", "link.example.org:8000", a) for a in argv
        ]

    node = _supernode_args(expand(hospital["services"]["supernode"]["command"]))
    doctor = _fedbigbigan_args(expand(hospital["services"]["doctor"]["command"]))
    for args in (node, doctor):
        assert args.superlink == "link.example.org:8000"
        assert args.root_certificates is not None
    assert str(doctor.auth_supernode_private_key) == node.auth_supernode_private_key
    assert doctor.node_config == node.node_config
    mounts = _mounts(hospital["services"]["supernode"])
    assert mounts["/data"][1] and mounts[node.auth_supernode_private_key][1]
    assert "ports" not in hospital["services"]["supernode"]


def test_dockerfile_copies_every_package():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+)", text, flags=re.M))
    packages = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    top = {p.split(".")[0] for p in packages["tool"]["setuptools"]["packages"]}
    assert top <= copied and {"pyproject.toml"} <= copied
    for source in copied:
        assert (DEPLOY.parent / source).exists(), source
    assert 'pip install ".${EXTRAS}"' in text
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in text


def _kustomize(folder: Path) -> list[dict]:
    """`kubectl kustomize` when kubectl exists; else the plain resources."""
    import shutil

    import yaml

    if shutil.which("kubectl"):
        done = subprocess.run(
            ["kubectl", "kustomize", str(folder)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return [d for d in yaml.safe_load_all(done.stdout) if d]
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        path = folder / resource
        if path.is_file():
            docs += [d for d in _yaml(path) if d]
    return docs


def _deployment(docs: list[dict], name: str) -> dict:
    (found,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name
    ]
    spec = found["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in spec.get("initContainers", []) + spec["containers"]:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, (name, mount["name"])
    return spec


def test_kubernetes_manifests():
    coordinator = _kustomize(DEPLOY / "k8s" / "coordinator")
    spec = _deployment(coordinator, "superlink")
    (container,) = spec["containers"]
    link = _superlink_args(container["args"])
    assert link.enable_supernode_auth and not link.insecure and link.database
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "superlink-tls"
    claims = {
        d["metadata"]["name"]
        for d in coordinator
        if d["kind"] == "PersistentVolumeClaim"
    }
    assert {"superlink-state", "superlink-runs"} <= claims

    hospital = _kustomize(DEPLOY / "k8s" / "hospital")
    spec = _deployment(hospital, "supernode")
    container, worker = spec["containers"]
    assert container["name"] == "supernode" and worker["name"] == "site-worker"
    node = _supernode_args(
        [a.replace("$(SUPERLINK)", "link:8000") for a in container["args"]]
    )
    assert node.root_certificates and node.auth_supernode_private_key
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["readOnly"] is True
    work = _fedbigbigan_args(worker["args"])
    assert work.command == "site-worker" and work.node_config == node.node_config
    assert volumes["worker-socket"]["emptyDir"] == {}  # the worker makes 0700 in it

    def mounted(c: dict) -> dict:
        return {m["name"]: m["mountPath"] for m in c["volumeMounts"]}

    assert mounted(container)["worker-socket"] == mounted(worker)["worker-socket"]
    assert "keys" not in mounted(worker) and "auth" not in mounted(worker)
    for c in [*spec["initContainers"], container, worker]:
        for mount in c["volumeMounts"]:
            if mount["name"] == "data":
                assert mount["readOnly"] is True
    assert volumes["auth"]["secret"]["secretName"] == "supernode-auth"
    doctor = [c for c in spec["initContainers"] if c["name"] == "doctor"][0]
    args = _fedbigbigan_args(
        [
            a.replace("$(SUPERLINK)", "link:8000").replace("$(PRESET)", "tiny")
            for a in doctor["args"]
        ]
    )
    assert args.command == "doctor" and args.node_config == node.node_config
    (policy,) = [d for d in hospital if d["kind"] == "NetworkPolicy"]
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ports == {53, 8000} and policy["spec"]["ingress"] == []
    _check_node_config(DEPLOY / "k8s" / "hospital" / "node.toml", "train")

    import shutil

    if shutil.which("kubectl"):  # the overlay needs kustomize to apply
        gpu = _kustomize(DEPLOY / "k8s" / "hospital-gpu")
        container, worker = _deployment(gpu, "supernode")["containers"]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert worker["image"] == container["image"] == "fedbigbigan:gpu"


def test_edge_exposes_the_fleet_api_only():
    text = (DEPLOY / "edge-nginx.conf").read_text()
    locations = re.findall(r"location\s+(=?\s*\S+)\s*\{([^}]*)\}", text)
    proxied = {path.strip() for path, body in locations if "proxy_pass" in body}
    assert proxied == {"/v1/fleet/", "= /health"}
    assert any(p.strip() == "/" and "return 403" in body for p, body in locations)
    assert "proxy_ssl_verify on" in text
