"""hola_ros: HOLA (HSD, AdaComp-RAG, Lo-Bi) on a robot, as a ROS 2 package.

The installed package merges the rosidl-generated interface modules (hola_ros.msg, .srv,
.action) with these sources; extend_path lets a source checkout see both.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
