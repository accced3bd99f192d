"""`hola-ros up` for machines without `ros2 launch`: start the graph's node processes, forward
SIGINT/SIGTERM, respawn a node that dies, and stop every node it started."""
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hola_ros.graph import Graph, LaunchOptions, NodeSpec, readiness_command

QUICK_DEATH_S = 5.0      # a node that dies sooner than this after its start failed to start
MAX_QUICK_DEATHS = 5     # ...this many times in a row: stop respawning it
STOP_GRACE_S = 15.0


def _log(message: str) -> None:
    print(f"[hola-ros up] {message}", file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    # Children get SIGTERM if the runner itself is killed, so no orphan keeps a model in memory.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def node_command(spec: NodeSpec, graph: Graph, options: LaunchOptions) -> list[str]:
    command = [sys.executable, "-m", f"hola_ros.nodes.{spec.executable}", "--ros-args",
               "-r", f"__node:={spec.name}", "-r", f"__ns:={options.namespace}",
               "--params-file", str(graph.parameters)]
    for params in options.params_files:
        command += ["--params-file", str(params)]
    return command + ["--log-level", options.log_level]


def node_env() -> dict:
    env = dict(os.environ)
    # Children import the same hola_ros as this process (a source checkout wins over the install).
    source_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class _Managed:
    def __init__(self, spec: NodeSpec, command: list[str]):
        self.spec, self.command = spec, command
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.quick_deaths = 0
        self.restart_at: float | None = None
        self.gave_up = False

    def start(self, env: dict) -> None:
        self.process = subprocess.Popen(self.command, env=env, preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()
        self.restart_at = None
        _log(f"started {self.spec.name} (pid {self.process.pid})")


def run_graph(graph: Graph, options: LaunchOptions | None = None, ready_timeout_s: float = 0.0) -> int:
    """ready_timeout_s > 0: also run `hola-ros status --wait` beside the nodes and log when every
    node reports ready (or that it was not within that time)."""
    env = node_env()
    options = options or LaunchOptions(nodes=graph.nodes)
    managed = [_Managed(spec, node_command(spec, graph, options)) for spec in options.nodes]
    stopping = {"signal": None}
    readiness = None

    def request_stop(signum, _frame):
        stopping["signal"] = signum

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for node in managed:
            node.start(env)
        started = time.monotonic()
        if ready_timeout_s > 0:
            readiness = subprocess.Popen(readiness_command(graph, options, ready_timeout_s), env=env,
                                         stdout=sys.stderr, preexec_fn=_die_with_parent)
        while stopping["signal"] is None:
            now = time.monotonic()
            if readiness is not None and readiness.poll() is not None:
                _log(f"graph ready ({now - started:.1f} s after start)" if readiness.returncode == 0 else
                     f"graph not ready {ready_timeout_s:g} s after start (see the states above)")
                readiness = None
            for node in managed:
                if node.gave_up:
                    continue
                if node.restart_at is not None:
                    if now >= node.restart_at:
                        node.start(env)
                    continue
                code = node.process.poll()
                if code is None:
                    continue
                lived = now - node.started_at
                node.quick_deaths = node.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
                if not node.spec.respawn:
                    _log(f"{node.spec.name} exited with {code}; respawn is off")
                    node.gave_up = True
                elif node.quick_deaths >= MAX_QUICK_DEATHS:
                    _log(f"{node.spec.name} died {node.quick_deaths} times within {QUICK_DEATH_S:.0f} s of "
                         "starting: not respawning it (see its log above)")
                    node.gave_up = True
                else:
                    _log(f"{node.spec.name} exited with {code} after {lived:.1f} s; "
                         f"respawning in {node.spec.respawn_delay:.1f} s")
                    node.restart_at = now + node.spec.respawn_delay
            time.sleep(0.2)
        _log(f"stopping ({signal.Signals(stopping['signal']).name})")
    finally:
        if readiness is not None and readiness.poll() is None:
            readiness.kill()
            readiness.wait()
        _stop_all(managed)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _stop_all(managed: list[_Managed]) -> None:
    alive = [n.process for n in managed if n.process is not None and n.process.poll() is None]
    for process in alive:
        process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in alive:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _log(f"pid {process.pid} ignored SIGINT for {STOP_GRACE_S:.0f} s: killing it")
            process.kill()
            process.wait()
