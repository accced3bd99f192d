"""python -m hola_ros.cli == hola-ros"""
import sys

from hola_ros.cli import main

sys.exit(main())
