"""A Ray cluster of ``ray start`` nodes on this machine, stopped by pid: for tests and benchmarks.

:class:`RayStartCluster` starts a head and worker nodes the way users do (``ray start --head``,
``ray start --address``), with this interpreter's Ray (``sys.executable -m ray.scripts.scripts``,
so the nodes import the same uqcampaign), private folders under a short ``folder``, every port
found by binding port 0, and token authentication as asked. Nothing global is touched: no
``/tmp/ray``, no ``~/.ray``, no fixed port, and no ``ray stop`` (which stops every Ray instance of
the machine's user).

Each node's ``ray start`` runs in a session of its own, so the node's daemons (GCS, raylet,
agents, Ray Client server) share its process group; Ray puts each worker process in a group of
its own, as a child of the raylet. :meth:`RayStartCluster.processes` finds both and remembers
each process by pid and start time, so that a worker whose raylet was killed is still found and a
reused pid is never touched; :meth:`RayStartCluster.stop` SIGKILLs each by pid until none is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = ["RayStartCluster", "Node", "free_ports"]

_NODE_PORTS = ("node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent", "metrics-export")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now (bound to port 0 together, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class Node:
    """One ``ray start`` node: its process group (the ``ray start`` pid) and its temporary folder."""

    group: int
    temp_dir: Path

    def processes(self) -> list[psutil.Process]:
        """Every live process of this node: its process group and their descendants."""
        found: dict[int, psutil.Process] = {}
        for process in psutil.process_iter():
            with contextlib.suppress(ProcessLookupError, psutil.Error):
                if os.getpgid(process.pid) == self.group:
                    found[process.pid] = process
        for process in list(found.values()):
            with contextlib.suppress(psutil.Error):
                found.update({child.pid: child for child in process.children(recursive=True)})
        return [process for process in found.values() if _alive(process)]

    def titled(self, start: str) -> list[psutil.Process]:
        """This node's processes whose title starts with ``start`` (Ray titles a worker ``ray::Class.method`` during a call)."""
        found = []
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                if " ".join(process.cmdline()).startswith(start):
                    found.append(process)
        return found

    def raylet(self) -> psutil.Process:
        """The node's raylet process."""
        raylets = [process for process in self.processes() if process.name() == "raylet"]
        if len(raylets) != 1:
            raise RuntimeError(f"node in {self.temp_dir} has {len(raylets)} raylets")
        return raylets[0]


@dataclass
class RayStartCluster:
    """A head and ``workers`` worker nodes of ``cpus`` CPUs and ``gpus`` logical GPUs each, under ``folder``.

    ``env``: the environment of the nodes (``RAY_TMPDIR=folder``; with ``token``,
    ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN``; no other ``RAY_*`` of this process). The head's
    folder is ``folder/ray``, Ray's default under ``RAY_TMPDIR``, so ``auto`` finds it there.
    After :meth:`start`: ``gcs`` (``127.0.0.1:port``), ``client`` (``ray://127.0.0.1:port``), ``head``, ``workers``.
    """

    folder: Path
    token: str | None = None
    cpus: int = 1
    gpus: int = 1
    n_workers: int = 1
    nodes: list[Node] = field(default_factory=list)
    seen: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
        self.env.update(RAY_TMPDIR=str(self.folder), RAY_USAGE_STATS_ENABLED="0")
        if self.token is not None:
            self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        else:
            self.env.update(RAY_AUTH_MODE="disabled")

    def _start(self, name: str, args: list[str]) -> Node:
        temp_dir = self.folder / name
        command = [sys.executable, "-m", "ray.scripts.scripts", "start", *args, "--temp-dir", str(temp_dir),
                   "--num-cpus", str(self.cpus), "--num-gpus", str(self.gpus),
                   "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats"]
        command += [arg for key, port in zip(_NODE_PORTS, free_ports(len(_NODE_PORTS)), strict=True) for arg in (f"--{key}-port", str(port))]
        log = self.folder / f"{name}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(group=process.pid, temp_dir=temp_dir)
        self.nodes.append(node)  # before waiting: stop() kills it even if the start fails
        if process.wait(timeout=180) != 0:
            raise RuntimeError(f"ray start of {name} failed: {log.read_text()[-3000:]}")
        self.processes()
        return node

    def start(self) -> RayStartCluster:
        """Start the head, then the worker nodes; returns self."""
        self.folder.mkdir(parents=True, exist_ok=True)
        gcs, client, dashboard = free_ports(3)
        self.head = self._start("ray", ["--head", "--port", str(gcs), "--ray-client-server-port", str(client),
                                        "--include-dashboard", "false", "--dashboard-port", str(dashboard)])
        self.gcs, self.client = f"127.0.0.1:{gcs}", f"ray://127.0.0.1:{client}"
        self.workers = [self._start(f"w{k}", ["--address", self.gcs]) for k in range(self.n_workers)]
        return self

    def processes(self) -> list[psutil.Process]:
        """Every live process the nodes started, seen now or before."""
        found = {process.pid: process for node in self.nodes for process in node.processes()}
        for pid, created in self.seen.items():
            if pid not in found:
                with contextlib.suppress(psutil.Error):
                    process = psutil.Process(pid)
                    if process.create_time() == created and _alive(process):
                        found[pid] = process
        for pid, process in found.items():
            with contextlib.suppress(psutil.Error):
                self.seen[pid] = process.create_time()
        return list(found.values())

    def stop(self) -> list[int]:
        """SIGKILL every process of every node by pid until none is left; returns the pids killed."""
        killed: list[int] = []
        for _ in range(20):
            alive = self.processes()
            if not alive:
                return killed
            for process in alive:
                with contextlib.suppress(psutil.Error):
                    process.send_signal(signal.SIGKILL)
                    killed.append(process.pid)
            psutil.wait_procs(alive, timeout=5)
        raise RuntimeError(f"Ray processes left after SIGKILL: {[p.pid for p in self.processes()]}")
