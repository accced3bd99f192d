"""Example: a command in words becomes a validated tool call of the HOLA graph, and the call a goal
of a ROS action that runs the skill.

    ros2 run hola_ros skill_bridge --ros-args -p request:="Go charge at the dock used for battery conditioning."

The node asks hola/ask with the robot's tools (parameter tools_file, default the demo site's
data/kb_eval/robot_tools.json) and tool_choice "required"; the answer's tool_calls field holds the
call, already validated against the tool's schema. The call goes as a hola_ros/action/Skill goal to
the action server <skills_namespace>/<tool name> (a skill server is a thin wrapper over Nav2's
NavigateToPose, a lift driver, ...). The node exits 0 when the skill succeeded, 1 otherwise.
"""
import json
from pathlib import Path

import rclpy
from rclpy.action import ActionClient
from rclpy.node import Node
from rclpy.task import Future

from hola_ros.action import Skill
from hola_ros.client import HolaClient
from hola_ros.package_data import package_file


class SkillBridge(Node):
    def __init__(self, **options):
        super().__init__("skill_bridge", **options)
        request = self.declare_parameter("request", "").value
        tools_file = self.declare_parameter("tools_file", "").value or str(package_file("data/kb_eval/robot_tools.json"))
        graph = self.declare_parameter("namespace", "").value
        self.skills = self.declare_parameter("skills_namespace", "skills").value
        timeout_s = self.declare_parameter("timeout_s", 120.0).value
        self.done = Future()  # (success, message, call) once the skill ran or the request failed
        if not request.strip():
            self.done.set_result((False, "parameter request is empty", None))
            return
        self.hola = HolaClient(self, namespace=graph or None)
        self.answer = self.hola.ask(request, timeout_s=timeout_s, tools=Path(tools_file).read_text(encoding="utf-8"),
                                    tool_choice="required", max_new_tokens=64)
        self.answer.add_done_callback(self._on_answer)

    def _on_answer(self, future) -> None:
        answer = future.result()
        if not answer.success or not answer.tool_calls:
            self.done.set_result((False, f"no call: {answer.error or answer.text}", None))
            return
        call = answer.tool_calls[0]
        sources = ", ".join(p["source"] for p in answer.stats.get("sources", []))
        self.get_logger().info(f"call {call['name']}({json.dumps(call['arguments'])}) grounded in [{sources}]")
        client = ActionClient(self, Skill, f"{self.skills}/{call['name']}")
        if not client.wait_for_server(timeout_sec=10.0):
            self.done.set_result((False, f"no skill server {self.skills}/{call['name']}", call))
            return
        goal = Skill.Goal(name=call["name"], arguments_json=json.dumps(call["arguments"]))
        client.send_goal_async(goal).add_done_callback(lambda sent: self._on_accepted(sent, call))

    def _on_accepted(self, sent, call) -> None:
        handle = sent.result()
        if not handle.accepted:
            self.done.set_result((False, "the skill server refused the goal", call))
            return
        handle.get_result_async().add_done_callback(
            lambda got: self.done.set_result((got.result().result.success, got.result().result.message, call)))


def main() -> int:
    rclpy.init()
    node = SkillBridge()
    try:
        rclpy.spin_until_future_complete(node, node.done)
        success, message, _ = node.done.result()
        node.get_logger().info(f"skill {'succeeded' if success else 'failed'}: {message}")
        return 0 if success else 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
