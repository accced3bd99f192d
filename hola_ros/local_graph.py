"""Run the node graph (`hola-ros up`) as a subprocess in an isolated ROS domain, with an rclpy node
in this process to talk to it: for tests and benchmarks. A `prefix` (e.g. `ip netns exec robot`)
runs the graph and its CLI calls elsewhere; this process then has no client node."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def default_domain_id() -> int:
    return 100 + os.getpid() % 100


def isolated_env(log_dir: Path, domain_id: int | None = None) -> dict:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id if domain_id is not None else default_domain_id()),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOG_DIR=str(log_dir), HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH", "")) if p))
    return env


def wait_future(future, timeout: float):
    # woken by the future itself: a polling sleep would add its period to every measured round trip
    done = threading.Event()
    future.add_done_callback(lambda _f: done.set())
    if not (future.done() or done.wait(timeout)):
        raise TimeoutError("no answer in time")
    return future.result()


class LocalGraph:
    """`hola-ros up --params <params> [--namespace NS] [--only NODES]` in a work dir, plus
    `self.node` (spun in a thread) unless a `prefix` runs the graph in another network namespace.
    `env`: variables set for the graph on top of the isolated ones."""

    def __init__(self, work_dir: Path, params: str = "", domain_id: int | None = None, *, namespace: str = "",
                 only: str = "", prefix: tuple[str, ...] = (), env: dict | None = None):
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.namespace, self.only, self.prefix = namespace, only, tuple(prefix)
        self.env = {**isolated_env(self.work_dir / "ros_log", domain_id), **(env or {})}
        extra = self.work_dir / "params.yaml"
        extra.write_text(params or "{}\n")
        self._log_path = self.work_dir / "graph.log"
        self._log = open(self._log_path, "w")
        self.up = subprocess.Popen([*self.prefix, sys.executable, "-m", "hola_ros.cli", "up", "--params", str(extra),
                                    *self._graph_args()],
                                   env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=SOURCE_ROOT,
                                   start_new_session=True)
        self.node = self.context = self.executor = None
        if not self.prefix:
            self._start_client_node()

    def _graph_args(self) -> list[str]:
        return ["--namespace", self.namespace, "--only", self.only]

    def _start_client_node(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from hola_ros.interfaces import normalize_namespace

        # this process joins the same isolated domain
        os.environ.update({k: self.env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOG_DIR")})
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        # in the graph's namespace: relative names (hola_ros.interfaces) reach this graph
        self.node = rclpy.create_node("hola_local_client", namespace=normalize_namespace(self.namespace),
                                      context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self._spin, daemon=True).start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # the context shuts down at stop()
            pass

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self._log_path.read_text()

    def node_pids(self) -> dict[str, int]:
        """Node name -> pid of the node processes the runner started."""
        out = {}
        for child in psutil.Process(self.up.pid).children():
            try:
                names = [a.split("=", 1)[1] for a in child.cmdline() if a.startswith("__node:=")]
            except psutil.Error:
                continue
            out.update({name: child.pid for name in names})
        return out

    def cli_command(self, *args) -> list[str]:
        return [*self.prefix, sys.executable, "-m", "hola_ros.cli", *args]

    def cli(self, *args, timeout=300) -> subprocess.CompletedProcess:
        return subprocess.run(self.cli_command(*args), env=self.env, cwd=SOURCE_ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def wait_active(self, timeout=600) -> dict:
        result = self.cli("status", "--wait", "--json", "--timeout", str(timeout), *self._graph_args(),
                          timeout=timeout + 30)
        if result.returncode != 0:
            raise RuntimeError(f"graph not active:\n{result.stdout}\n{result.stderr}\n--- graph log ---\n"
                               f"{self.log_text()[-6000:]}")
        return json.loads(result.stdout)

    def stop(self, timeout=60) -> int:
        import rclpy

        try:
            if self.up.poll() is None:
                self.up.send_signal(signal.SIGINT)
                code = self.up.wait(timeout)
            else:
                code = self.up.returncode
        finally:
            if self.up.poll() is None:
                os.killpg(self.up.pid, signal.SIGKILL)
                self.up.wait()
            if self.node is not None:
                self.executor.shutdown(timeout_sec=2)
                self.node.destroy_node()
                rclpy.try_shutdown(context=self.context)
            self._log.close()
        return code
