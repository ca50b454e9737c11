"""s3prl's `upstream/<name>/hubconf.py` slot: the `star_hubert*` entry names for `s3prl/hub.py`.

`s3prl/hub.py` does `from s3prl.upstream.star_hubert.hubconf import *`, so `__all__` lists
exactly the entry names. The patches are applied here too (idempotent), for a checkout whose
hub.py imports this module directly.
"""
from s3prl_star.integration import patches as _patches
from s3prl_star.integration.hub import (  # noqa: F401 (the entry names, exported through __all__)
    ENTRY_NAMES, star_hubert, star_hubert_int8, star_hubert_local, star_hubert_url, star_hubert_with_feature,
)

_patches.apply()

__all__ = list(ENTRY_NAMES)
