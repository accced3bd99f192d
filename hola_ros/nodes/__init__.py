"""Thin ROS 2 adapters over hola_ros.core, one module per node process."""
