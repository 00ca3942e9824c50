"""Command-line tools of the repository.

Each module runs as a script (``python tools/count_flops.py ...``) and, because this folder is a
package and pytest puts the repository root on ``sys.path`` (``pythonpath = .`` in setup.cfg),
imports in tests as ``from tools import count_flops`` without editing ``sys.path``.
"""
