"""Example nodes that use the HOLA graph from robot code."""
