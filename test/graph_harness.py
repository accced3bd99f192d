"""Start the real node graph (`hola-ros up`) in an isolated ROS domain, and talk to it."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def isolated_env(log_dir: Path) -> dict:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(100 + os.getpid() % 100), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROS_LOG_DIR=str(log_dir), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p))
    return env


class Graph:
    """`hola-ros up` as a subprocess plus an rclpy node in this process (own context)."""

    def __init__(self, tmp: Path, params: str = ""):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.tmp = tmp
        self.env = isolated_env(tmp / "ros_log")
        os.environ.update({k: self.env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOG_DIR")})
        extra = tmp / "test_params.yaml"
        extra.write_text(params or "{}\n")
        self.log = open(tmp / "graph.log", "w")
        self.up = subprocess.Popen([sys.executable, "-m", "hola_ros.cli", "up", "--params", str(extra)],
                                   env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                   start_new_session=True)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("hola_test_client", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_forever, daemon=True)
        self._spin.start()

    def _spin_forever(self):
        try:
            self.executor.spin()
        except Exception:  # context shut down at teardown
            pass

    def log_text(self) -> str:
        self.log.flush()
        return (self.tmp / "graph.log").read_text()

    def node_pids(self) -> dict[str, int]:
        """Node name -> pid of the node processes the runner started."""
        out = {}
        for child in psutil.Process(self.up.pid).children():
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            for arg in cmd:
                if arg.startswith("__node:="):
                    out[arg.split("=", 1)[1]] = child.pid
        return out

    def cli(self, *args, timeout=300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hola_ros.cli", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def wait_active(self, timeout=600):
        result = self.cli("status", "--wait", "--json", "--timeout", str(timeout), timeout=timeout + 30)
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
            self.executor.shutdown(timeout_sec=2)
            self.node.destroy_node()
            rclpy.try_shutdown(context=self.context)
            self.log.close()
        return code


def wait_future(future, timeout: float):
    deadline = time.monotonic() + timeout
    while not future.done():
        if time.monotonic() > deadline:
            raise TimeoutError("no answer in time")
        time.sleep(0.02)
    return future.result()
