"""The memory planner: peak training memory per GPU of a LazyConfig (``tools/estimate_memory.py``).

A subpackage of its own because it builds models of every task (classification, MIM, ...): it
imports those packages, and nothing in eva_core imports it.
"""
from .planner import *  # noqa: F401,F403
from .planner import __all__  # noqa: F401
