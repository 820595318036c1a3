"""The install ships every subpackage: an editable install finds them from the tree and
hides a missing one, which a plain ``pip install .`` then lacks (``import pyopt`` fails)."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_setup_cfg_lists_every_package_directory():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    dirs = dict(line.split("=") for line in cfg["options"]["package_dir"].split("\n") if line)
    on_disk = set()
    for name, folder in ((n.strip(), f.strip()) for n, f in dirs.items()):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            on_disk.add(".".join((name, *rel)))
    assert on_disk == listed
