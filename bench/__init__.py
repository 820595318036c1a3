"""``pyopt bench``: the benchmark runner (``suite.py``) and its cases (``cases.py``).

Installed as ``pyopt.bench``; committed results live under ``bench/results/<machine>/``.
"""
