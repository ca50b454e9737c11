"""`star_hubert*` as s3prl upstreams in every Python process of the environment, with no import in user code.

The wheel installs `s3prl_star_autoload.pth` into site-packages; Python runs its line at start-up, which
imports this module, and `install()` only adds a finder to `sys.meta_path`: nothing else is imported then.
When a program first imports `s3prl.hub` (s3prl's runners, `s3prl.nn.S3PRLUpstream`, ESPnet's s3prl
frontend), the finder applies this package's patches before `s3prl.hub` runs (so it imports on the tested
stack whatever the import order) and registers the `star_hubert*` names once it has run.

Set S3PRL_STAR_AUTOLOAD=0 to turn it off for a process (then call `s3prl_star.register()` yourself).
"""
from __future__ import annotations

import importlib.machinery
import os
import sys

SWITCH = "S3PRL_STAR_AUTOLOAD"
HUB = "s3prl.hub"


class _RegisteringLoader:
    """s3prl.hub's own loader, with this package's patches applied before it runs and its names added after."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        from s3prl_star.integration import patches

        patches.apply()
        self.loader.exec_module(module)
        from s3prl_star.integration.hub import register

        register()


class _HubFinder:
    """A `sys.meta_path` finder: finds `s3prl.hub` as the path finder does, once, and wraps its loader.
    (Plain classes: `importlib.abc` would import `importlib.resources` at every start-up.)"""

    def find_spec(self, fullname, path, target=None):
        if fullname != HUB:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install() -> None:
    """Add the finder (what the .pth line calls); nothing when turned off or when s3prl.hub is imported already."""
    if os.environ.get(SWITCH, "1") == "0" or HUB in sys.modules:
        return
    if not any(isinstance(finder, _HubFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _HubFinder())
