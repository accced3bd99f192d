"""ros2 launch hola_ros edge.launch.py [graph:=/path/graph.yaml]

Starts the graph described in config/graph.yaml (the same file `hola-ros up` reads) as
lifecycle nodes that activate themselves (parameter autostart) and respawn when they die.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from hola_ros.graph import load_graph


def _nodes(context):
    graph = load_graph(LaunchConfiguration("graph").perform(context) or None)
    return [LifecycleNode(package="hola_ros", executable=node.executable, name=node.name, namespace="",
                          parameters=[str(graph.parameters)], respawn=node.respawn,
                          respawn_delay=node.respawn_delay, output="screen")
            for node in graph.nodes]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("graph", default_value="", description="graph YAML (default: the package's)"),
        OpaqueFunction(function=_nodes),
    ])
