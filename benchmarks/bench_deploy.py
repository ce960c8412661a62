"""Deployed rounds on real Flower processes: per-round wall time at the server
against the slowest site's own work, with and without the site worker, under
SecAgg+ and ours (issue 24).

A real `flower-superlink` (TLS, SuperNode authentication) and one real
`flower-supernode` per phantom site on 127.0.0.1, started by the deployment
tests' harness (`tests/deployment_harness.py`), and `flwr run` of this
checkout. For each configuration it reads the run's own `metrics.json`
(`timing`: each secure round's wall time at the server and the slowest site's
`seconds`, `server/timing.py`) and prints:

- overhead as recorded: (round wall - slowest site's seconds) / round wall.
  Without a worker a site's seconds include its fresh ClientApp process's
  TensorFlow import, ingest-cache read and model build;
- overhead of the work itself: the same with the slowest site's seconds *in
  its site worker* (the worker logs each message's seconds), so only with a
  worker;
- peak memory per node: sampled every 0.5 s from /proc (the SuperNode with
  its SuperExec and ClientApp processes; the worker apart), next to the
  records' peak-rss-mb (largest over the sites) and the worker's own;
- where a stage's time goes at the nodes, from the SuperNodes' log lines
  (timestamped here as they appear, 0.1 s resolution).

    python benchmarks/bench_deploy.py                      # all four, tiny, 2 rounds
    python benchmarks/bench_deploy.py --configs none/secagg+ worker/secagg+
    python benchmarks/bench_deploy.py --task-poll 0.1 --task-poll-configs worker/secagg+
    python benchmarks/bench_deploy.py --startup 5          # a ClientApp's imports

Defaults: the paper scenario's phantom sites at `--scale 0.3 --slices 2`
(~40 training slices a site), 3 training sites (hospital A's two fleets and a
renamed copy of the first, as the deployment tests make them) + hospital B
external, preset tiny, 2 BigBiGAN rounds, then the head and the evaluation:
one configuration took 3.5-4.5 min on 2 CPU cores. Exits non-zero with one
line if a run fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the deployment tests' harness and study layout, reused as they are
sys.path.insert(0, str(REPO / "tests"))

from deployment_harness import Federation  # noqa: E402

CONFIGS = {  # name: (site workers, secure-aggregation)
    "none/secagg+": (False, "secagg+"),
    "worker/secagg+": (True, "secagg+"),
    "none/ours": (False, "fedbigbigan"),
    "worker/ours": (True, "fedbigbigan"),
}
# run config a configuration may add after a colon ("worker/ours:flower-poll"):
# the state before issue 24's protocol changes, one at a time
VARIANTS = {
    "flower-poll": {"secagg-poll-interval": 3.0},  # Flower's own 3 s reply loop
    "four-trips": {"secagg-keys-ahead": False},  # ours: setup in every round
}
NODE_EVENTS = {
    "Receiving:": "receiving",
    "Received successfully": "received",
    "Sending:": "sending",
    "Sent successfully": "sent",
}
WORKER_LINE = re.compile(r"site worker: (\w+) (\w*) in ([\d.]+) s")


class Watcher:
    """Timestamps the SuperNodes' and workers' log lines as they appear, and
    samples every node's memory (its process tree's RSS) from /proc."""

    def __init__(self, fed: Federation, nodes: dict, workers: dict):
        self.fed, self.nodes, self.workers = fed, nodes, workers
        self.events: list[tuple[str, str, float]] = []  # (site, kind, time)
        self.worker_work: dict[str, list[tuple[str, str, float]]] = {}
        self.peak_node_mb = dict.fromkeys(nodes, 0.0)  # SuperNode tree, summed
        self.peak_clientapp_mb = dict.fromkeys(nodes, 0.0)  # one process's HWM
        self.peak_worker_mb = dict.fromkeys(workers, 0.0)
        self.peak_server_mb = 0.0  # SuperLink, SuperExec and ServerApp, summed
        self._stop = threading.Event()
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, str] = {}
        self._threads = [
            threading.Thread(target=self._logs, daemon=True),
            threading.Thread(target=self._memory, daemon=True),
        ]

    def __enter__(self) -> Watcher:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self._read_logs()

    def _new_lines(self, path: Path) -> list[str]:
        try:
            with open(path, "rb") as f:
                f.seek(self._offsets.get(path, 0))
                data = f.read()
        except OSError:
            return []
        self._offsets[path] = self._offsets.get(path, 0) + len(data)
        text = self._partial.get(path, "") + data.decode(errors="replace")
        lines = text.split("\n")
        self._partial[path] = lines.pop()
        return lines

    def _read_logs(self) -> None:
        now = time.monotonic()
        for site, proc in self.nodes.items():
            for line in self._new_lines(proc.log):
                for marker, kind in NODE_EVENTS.items():
                    if marker in line:
                        self.events.append((site, kind, now))
        for site, proc in self.workers.items():
            for line in self._new_lines(proc.log):
                found = WORKER_LINE.search(line)
                if found:
                    op, phase, seconds = found.groups()
                    self.worker_work.setdefault(site, []).append(
                        (op, phase, float(seconds))
                    )

    def _logs(self) -> None:
        while not self._stop.wait(0.1):
            self._read_logs()

    def _memory(self) -> None:
        link = next(p for p in self.fed.processes if p.name == "superlink")
        while not self._stop.wait(0.5):
            tree = process_tree()
            for site, proc in self.nodes.items():
                total = 0.0
                for pid in tree(proc.pid):
                    rss, hwm, clientapp = _status(pid)
                    total += rss
                    if clientapp:
                        self.peak_clientapp_mb[site] = max(
                            self.peak_clientapp_mb[site], hwm
                        )
                self.peak_node_mb[site] = max(self.peak_node_mb[site], total)
            for site, proc in self.workers.items():
                _, hwm, _ = _status(proc.pid)
                self.peak_worker_mb[site] = max(self.peak_worker_mb[site], hwm)
            server = sum(_status(p)[0] for p in tree(link.pid))
            self.peak_server_mb = max(self.peak_server_mb, server)


def process_tree():
    """A function giving a PID and every process below it, from one scan of
    /proc (the harness's `descendants` scans once per call)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))

    def tree(pid: int) -> list[int]:
        found, todo = [pid], [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    return tree


def _status(pid: int) -> tuple[float, float, bool]:
    """(RSS MB, peak RSS MB, is a ClientApp process) of a process; zeros if gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return 0.0, 0.0, False
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def mb(key: str) -> float:
        return int(fields.get(key, "0 kB").split()[0]) / 1024

    return mb("VmRSS"), mb("VmHWM"), b"flwr-clientapp" in cmdline


def stages(events: list, training: list[str]) -> list[dict]:
    """The nodes' view of each message stage: the training nodes get the same
    sequence of messages, so the i-th message of each is one stage. Per stage:
    from the first node's pull to the last node's reply sent, the slowest
    ClientApp (received -> reply ready to send) and the gap before the next
    stage reached the first node (the server's poll, its own work, the
    SuperNodes' poll)."""
    per_node = {}
    for site in training:
        mine = [(kind, t) for s, kind, t in events if s == site]
        msgs, current = [], {}
        for kind, t in mine:
            if kind == "receiving" and current:
                msgs.append(current)
                current = {}
            current.setdefault(kind, t)
        if current:
            msgs.append(current)
        per_node[site] = [m for m in msgs if {"receiving", "sent"} <= set(m)]
    counts = {len(m) for m in per_node.values()}
    if len(counts) != 1:
        return []
    out = []
    for i in range(counts.pop()):
        msgs = [per_node[s][i] for s in training]
        first, last = min(m["receiving"] for m in msgs), max(m["sent"] for m in msgs)
        clientapp = max(m.get("sending", m["sent"]) - m["received"] for m in msgs)
        out.append({"start": first, "end": last, "clientapp": clientapp})
    for a, b in zip(out, out[1:], strict=False):
        a["gap_after"] = b["start"] - a["end"]
    return out


def configuration(name: str) -> str:
    """`name` if it is a configuration: BASE or BASE:VARIANT[,VARIANT]."""
    base, _, variants = name.partition(":")
    unknown = [v for v in variants.split(",") if v and v not in VARIANTS]
    if base not in CONFIGS or unknown:
        raise argparse.ArgumentTypeError(
            f"{name!r}: write one of {list(CONFIGS)}, optionally followed by "
            f":{'|'.join(VARIANTS)} (comma-separated)"
        )
    return name


def split_name(name: str) -> tuple[bool, str, dict]:
    """A configuration's site workers, protocol and extra run config."""
    base, _, variants = name.partition(":")
    extra: dict = {}
    for v in filter(None, variants.split(",")):
        extra |= VARIANTS[v]
    return (*CONFIGS[base], extra)


def run_config(
    args: argparse.Namespace, protocol: str, out: Path, sites, extra: dict
) -> str:
    values = {
        "preset": args.preset,
        "gan-rounds": args.rounds,
        "local-epochs": args.local_epochs,
        "logit-rounds": 0,
        "secagg-timeout": 900.0,
        "out-dir": str(out),
        "sim-sites": ",".join(f"{n}:{role}" for n, (_, role) in sites.items()),
    }
    if protocol != "secagg+":
        values["secure-aggregation"] = protocol
    values |= extra
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def one(args, name: str, root: Path, sites: dict, poll: float | None) -> dict:
    """One configuration on its own SuperLink (every SuperExec polling for
    tasks every `poll` s if given, else Flower's default); its figures."""
    workers, protocol, extra = split_name(name)
    label = name if poll is None else f"{name} task-poll {poll:g} s"
    folder = name.replace("/", "-").replace("+", "p").replace(":", "-")
    folder = folder.replace(",", "-")
    fed = Federation(root / (folder if poll is None else f"{folder}-poll{poll:g}"))
    if poll is not None:  # the SuperExecs' (nodes' and link's) task poll
        fed.env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(poll)
    try:
        fed.start_superlink(database=False)
        nodes = fed.start_sites(sites, workers=workers)
        worker_procs = {
            s: p for p in fed.processes for s in sites if p.name == f"worker-{s}"
        }
        out = fed.root / "run"
        load = [os.getloadavg()[0]]
        started = time.monotonic()
        with Watcher(fed, nodes, worker_procs) as watch:
            run = fed.flwr_run(run_config(args, protocol, out, sites, extra))
            run_id, info = fed.wait_for_run(run, args.timeout)
        wall = time.monotonic() - started
        load.append(os.getloadavg()[0])
        if info["status"] != "finished:completed":
            raise RuntimeError(f"run {run_id} {info['status']}: {run.text()[-300:]}")
        fallback = [s for s, p in nodes.items() if "site worker" in p.text()]
        if workers and fallback:
            raise RuntimeError(f"ClientApps worked themselves at {fallback}")
        statuses = {}
        if workers:
            from client.worker_protocol import ping

            statuses = {s: ping(fed.worker_socket(s)) for s in sites}
    finally:
        fed.stop()
    metrics = json.loads((out / "metrics.json").read_text())
    timing = metrics["timing"]
    training = [s for s, (_, role) in sites.items() if role == "train"]
    # the k-th `fit PHASE` a worker logged is the k-th secure round of PHASE
    seen: dict[str, int] = {}
    for r in timing["rounds"]:
        k = seen[r["phase"]] = seen.get(r["phase"], 0) + 1
        work = []
        for s in training:
            fits = [
                w
                for (op, ph, w) in watch.worker_work.get(s, [])
                if op == "fit" and ph == r["phase"]
            ]
            if len(fits) >= k:
                work.append(fits[k - 1])
        r["work_seconds"] = max(work) if len(work) == len(training) else math.nan
    return {
        "config": label,
        "run_id": run_id,
        "elapsed": info.get("elapsed"),
        "wall": wall,
        "load": load,
        "timing": timing,
        "stages": stages(watch.events, training),
        "peak_node_mb": watch.peak_node_mb,
        "peak_clientapp_mb": watch.peak_clientapp_mb,
        "peak_worker_mb_sampled": watch.peak_worker_mb,
        "peak_server_mb": watch.peak_server_mb,
        "workers": statuses,
        "logs": str(fed.logs),
    }


def overhead(wall: float, work: float) -> float:
    return (wall - work) / wall if wall > 0 and math.isfinite(work) else math.nan


def pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.1f}%"


def report(results: list[dict]) -> None:
    print()
    for res in results:
        print(
            f"{res['config']}: run {res['run_id']}, {res['wall']:.0f} s in all "
            f"(load average {res['load'][0]:.1f} before, {res['load'][1]:.1f} after)"
        )
        for r in res["timing"]["rounds"]:
            print(
                f"  {r['phase']:8} {r['round']}: {r.get('stages', '?')} stages, "
                f"wall {r['seconds']:6.1f} s, "
                f"slowest site {r['site_seconds']:5.1f} s (overhead "
                f"{pct(overhead(r['seconds'], r['site_seconds']))}), work in the "
                f"worker {r['work_seconds']:5.1f} s (overhead "
                f"{pct(overhead(r['seconds'], r['work_seconds']))})"
            )
        st = res["stages"]
        if st:
            spans = [s["end"] - s["start"] for s in st]
            apps = [s["clientapp"] for s in st]
            gaps = [s["gap_after"] for s in st if "gap_after" in s]
            print(
                f"  {len(st)} message stages at the training nodes: span median "
                f"{statistics.median(spans):.1f} s; slowest ClientApp (received -> "
                f"reply) median {statistics.median(apps):.1f} s, min "
                f"{min(apps):.1f} s; gap to the next stage median "
                f"{statistics.median(gaps) if gaps else math.nan:.1f} s"
            )
        nodes = ", ".join(f"{s} {v:.0f}" for s, v in res["peak_node_mb"].items())
        print(f"  peak MB per node (SuperNode tree): {nodes}")
        apps = ", ".join(f"{s} {v:.0f}" for s, v in res["peak_clientapp_mb"].items())
        print(f"  peak MB of one ClientApp process: {apps}")
        if res["workers"]:
            w = ", ".join(
                f"{s} {v['peak-rss-mb']:.0f} (served {v['served']}, models "
                f"{v['models']})"
                for s, v in res["workers"].items()
            )
            print(f"  site workers' peak MB: {w}")
        print(f"  SuperLink + ServerApp peak MB: {res['peak_server_mb']:.0f}")
    print()
    head = (
        "| configuration | BigBiGAN rounds: wall (s) | slowest site, recorded (s) "
        "| overhead, recorded | work in the worker (s) | overhead, work only "
        "| all secure rounds: wall, overhead recorded / work only "
        "| peak MB per node, recorded (largest site) | peak MB per node, sampled "
        "(SuperNode tree; + worker) |"
    )
    print(head)
    print("|" + "---|" * head.count(" |"))
    for res in results:
        gan = [r for r in res["timing"]["rounds"] if r["phase"] == "gan"]
        walls = sum(r["seconds"] for r in gan)
        rec = sum(r["site_seconds"] for r in gan)
        work = sum(r["work_seconds"] for r in gan)
        every = res["timing"]["rounds"]
        all_wall = sum(r["seconds"] for r in every)
        all_work = sum(r["work_seconds"] for r in every)
        node = max(res["peak_node_mb"].values())
        worker = max(
            (v["peak-rss-mb"] for v in res["workers"].values()), default=math.nan
        )
        walls_s, rec_s, work_s = (
            " / ".join(f"{r[key]:.1f}" if math.isfinite(r[key]) else "-" for r in gan)
            for key in ("seconds", "site_seconds", "work_seconds")
        )
        print(
            f"| {res['config']} | {walls_s} | {rec_s} "
            f"| {pct(overhead(walls, rec))} | {work_s} "
            f"| {pct(overhead(walls, work))} "
            f"| {all_wall:.0f} s, {pct(res['timing']['overhead'])} / "
            f"{pct(overhead(all_wall, all_work))} "
            f"| {res['timing']['site_peak_rss_mb']:.0f} "
            f"| {node:.0f}" + ("" if math.isnan(worker) else f" + {worker:.0f}") + " |"
        )


STARTUP = {  # what a fresh ClientApp process imports, step by step
    "python itself": "pass",
    "+ flwr-clientapp's module": "import flwr.supernode.cli",
    "+ our ClientApp (client.client_app)": "import flwr.supernode.cli\n"
    "import client.client_app",
    "+ TensorFlow (a training message without a worker)": "import flwr.supernode.cli"
    "\nimport client.client_app\nimport tensorflow",
}


def startup(repeats: int) -> None:
    """Median and min wall seconds of fresh processes importing what a
    ClientApp process imports (not Flower's own runtime: its pull, FAB
    install and push are in the stage timeline of a run)."""
    import subprocess

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
    }
    for label, code in STARTUP.items():
        walls = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", code],
                env=env,
                check=True,
                stderr=subprocess.DEVNULL,
            )
            walls.append(time.perf_counter() - started)
        print(
            f"{label:52} median {statistics.median(walls):5.2f} s, "
            f"min {min(walls):5.2f} s ({repeats} processes)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        type=configuration,
        default=list(CONFIGS),
        help=f"of {list(CONFIGS)}, each optionally with :VARIANT[,VARIANT] of "
        f"{list(VARIANTS)}",
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rounds", type=int, default=2, help="BigBiGAN rounds")
    parser.add_argument("--train-sites", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0.3, help="phantom scale")
    parser.add_argument("--slices", type=int, default=2, help="slices per patient")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument(
        "--task-poll",
        type=float,
        help="also run --task-poll-configs with FLWR_SUPEREXEC_TASK_POLL_INTERVAL "
        "at this value for every SuperExec (Flower's default: 1.0 s), each right "
        "after the same configuration at the default",
    )
    parser.add_argument(
        "--task-poll-configs",
        nargs="+",
        type=configuration,
        help="the configurations --task-poll re-runs (default: the first of --configs)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="per run")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument(
        "--startup",
        type=int,
        metavar="N",
        help="only time N fresh processes importing what a ClientApp imports",
    )
    parser.add_argument(
        "--report", type=Path, help="only print the table of a --json file"
    )
    args = parser.parse_args()
    if args.report:
        report(json.loads(args.report.read_text()))
        return 0
    if args.startup:
        startup(args.startup)
        return 0

    from test_deployment_runs import study

    from simulations.scenarios import build_scenario, load_scenario

    root = Path(tempfile.mkdtemp(prefix="fb-deploy-"))
    phantom = root / "phantom"
    build_scenario(load_scenario("paper"), phantom, args.scale, 0, args.slices)
    sites = study(phantom, root / "data", args.train_sites)
    print(
        f"{len(sites)} sites ({args.train_sites} training + hospital B external), "
        f"preset {args.preset}, {args.rounds} BigBiGAN rounds; folders in {root}"
    )
    lowered = set(args.task_poll_configs or args.configs[:1])
    runs = [(name, None) for name in args.configs]
    if args.task_poll is not None:
        runs = [
            run
            for name in args.configs
            for run in [(name, None)]
            + ([(name, args.task_poll)] if name in lowered else [])
        ]
    results = []
    for name, poll in runs:
        print(f"{name}{'' if poll is None else f' task-poll {poll:g}'} ...", flush=True)
        try:
            results.append(one(args, name, root, sites, poll))
        except BaseException as err:  # one line, then non-zero
            text = " ".join(f"{type(err).__name__}: {err}".split())[:400]
            print(f"bench_deploy: {name} failed: {text} (logs in {root})")
            return 1
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    report(results)
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
