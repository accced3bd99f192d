"""What every hola_ros node shares: lifecycle with autostart, telemetry, parameter checks."""
import math
import socket
import sys
import time
import uuid
from typing import Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import TransitionCallbackReturn

from hola_ros.msg import Telemetry
from hola_ros.resources import ResourceSampler

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class HolaNode(LifecycleNode):
    """Subclasses declare parameters (with checks) and implement activate_resources /
    deactivate_resources (load / free models, create / destroy their services) and
    telemetry_figures."""

    def __init__(self, name: str, role: str, params: dict, checks: dict[str, tuple[Callable, str]] | None = None):
        super().__init__(name)
        self.role, self.instance_id = role, uuid.uuid4().hex
        self._checks = {"telemetry_rate_hz": (lambda v: 0 < v <= 100, "must be in (0, 100]"), **(checks or {})}
        self.declare_parameter("autostart", True)
        self.declare_parameter("telemetry_rate_hz", 1.0)
        for key, value in params.items():
            self.declare_parameter(key, value)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.state_label = "unconfigured"
        self._sampler = ResourceSampler()
        self._hostname = socket.gethostname()
        self._telemetry_pub = self.create_publisher(Telemetry, "/hola/telemetry", 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._telemetry_timer = self.create_timer(1.0 / self.param("telemetry_rate_hz"), self._publish_telemetry)

    def param(self, name: str):
        return self.get_parameter(name).value

    def _check_parameters(self, params) -> SetParametersResult:
        for p in params:
            check = self._checks.get(p.name)
            if check is not None and not _safe(check[0], p.value):
                return SetParametersResult(successful=False, reason=f"{p.name}={p.value!r}: {check[1]}")
            if p.name == "telemetry_rate_hz" and hasattr(self, "_telemetry_timer"):
                self._telemetry_timer.timer_period_ns = int(1e9 / p.value)
        return SetParametersResult(successful=True)

    # lifecycle: configure only checks parameters; activate loads, deactivate frees.
    def on_configure(self, state) -> TransitionCallbackReturn:
        bad = [f"{name}={self.param(name)!r}: {why}" for name, (ok, why) in self._checks.items()
               if not _safe(ok, self.param(name))]
        if bad:
            self.get_logger().error("invalid parameters: " + "; ".join(bad))
            return FAILURE
        self.state_label = "inactive"
        return SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        started = time.monotonic()
        try:
            self.activate_resources()
        except Exception as exc:
            self.get_logger().error(f"activation failed: {type(exc).__name__}: {exc}")
            self.deactivate_resources()
            return FAILURE
        self.state_label = "active"
        self.get_logger().info(f"active ({time.monotonic() - started:.1f} s to load)")
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self.deactivate_resources()
        self.state_label = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self.state_label = "unconfigured"
        return SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        if self.state_label == "active":
            self.deactivate_resources()
        self.state_label = "finalized"
        return SUCCESS

    def activate_resources(self) -> None:
        raise NotImplementedError

    def deactivate_resources(self) -> None:
        raise NotImplementedError

    def executor_threads(self) -> int:
        return 4

    def telemetry_figures(self) -> dict:
        """Node-specific Telemetry fields (tokens_per_s, queue_depth, requests_served, ...)."""
        return {}

    def _publish_telemetry(self) -> None:
        figures = {**self._sampler.sample(), **self.telemetry_figures()}
        msg = Telemetry(stamp=self.get_clock().now().to_msg(), node=self.get_name(), role=self.role,
                        instance_id=self.instance_id, state=self.state_label)
        for key, value in figures.items():
            if hasattr(msg, key):
                setattr(msg, key, type(getattr(msg, key))(value))
        self._telemetry_pub.publish(msg)
        level = DiagnosticStatus.OK if self.state_label == "active" else DiagnosticStatus.WARN
        status = DiagnosticStatus(level=level, name=f"hola_ros: {self.get_name()}", hardware_id=self._hostname,
                                  message=self.state_label,
                                  values=[KeyValue(key=k, value=_fmt(v)) for k, v in sorted(figures.items())])
        self._diagnostics_pub.publish(DiagnosticArray(header=_header(msg.stamp), status=[status]))


def _safe(check: Callable, value) -> bool:
    try:
        return bool(check(value))
    except Exception:
        return False


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _header(stamp):
    from std_msgs.msg import Header

    return Header(stamp=stamp)


def run_node(node_class) -> int:
    """Process entry point: build the node, configure + activate it when autostart is set, spin."""
    rclpy.init(args=sys.argv)
    node = node_class()
    executor = MultiThreadedExecutor(num_threads=node.executor_threads())
    executor.add_node(node)
    try:
        if node.param("autostart"):
            if node.trigger_configure() != SUCCESS or node.trigger_activate() != SUCCESS:
                node.get_logger().fatal("autostart failed: exiting (a supervisor may respawn this node)")
                return 1
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node.state_label == "active":
            node.deactivate_resources()
        executor.shutdown(timeout_sec=5)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
