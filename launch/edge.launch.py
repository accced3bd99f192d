"""ros2 launch hola_ros edge.launch.py [namespace:=robot1] [params_file:=my.yaml] [graph:=graph.yaml]
                                       [log_level:=info] [nodes:=hola_verifier]

Starts the graph described in config/graph.yaml (the same file `hola-ros up` reads, with the same
options) as lifecycle nodes that activate themselves (parameter autostart) and respawn when they die.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from hola_ros.graph import LOG_LEVELS, launch_options, load_graph

ARGUMENTS = {
    "namespace": ("", "ROS namespace of the whole graph: robot1 serves /robot1/hola/ask"),
    "params_file": ("", "extra ROS 2 parameters file, applied after the graph's own"),
    "graph": ("", "graph YAML (default: the package's config/graph.yaml)"),
    "log_level": ("info", f"one of {', '.join(LOG_LEVELS)}"),
    "nodes": ("", "comma-separated node names to start (default: every node of the graph)"),
}


def _nodes(context):
    arg = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    graph = load_graph(arg["graph"] or None)
    options = launch_options(graph, arg["namespace"], [arg["params_file"]], arg["log_level"], arg["nodes"])
    return [LifecycleNode(package="hola_ros", executable=node.executable, name=node.name,
                          namespace=options.namespace,
                          parameters=[str(graph.parameters), *map(str, options.params_files)],
                          ros_arguments=["--log-level", options.log_level], respawn=node.respawn,
                          respawn_delay=node.respawn_delay, output="screen")
            for node in options.nodes]


def generate_launch_description():
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=description)
          for name, (default, description) in ARGUMENTS.items()),
        OpaqueFunction(function=_nodes),
    ])
