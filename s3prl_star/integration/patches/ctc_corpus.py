"""The PyPI s3prl lacks `downstream/ctc/corpus/`, whose `libriphone` (PR) and `snips` (SF) readers
`-d ctc`'s data.py imports; this project's own (`s3prl_star.integration.ctc_corpus`) are registered
under those names.
"""
from __future__ import annotations

import importlib.util
import sys
import types


def add_ctc_corpus_readers() -> bool:
    """Register `s3prl_star.integration.ctc_corpus.libriphone` and `.snips` as `s3prl.downstream.ctc.corpus.libriphone`
    and `.snips` (data.py: `from .corpus.libriphone import LibriPhoneDataset`), unless s3prl has them."""
    package_name = "s3prl.downstream.ctc.corpus"
    if package_name in sys.modules or importlib.util.find_spec(package_name) is not None:
        return False
    from s3prl_star.integration.ctc_corpus import libriphone, snips

    package = types.ModuleType(package_name, "s3prl_star.integration.patches.ctc_corpus: this project's PR and SF corpus readers")
    package.__path__ = []
    for name, module in (("libriphone", libriphone), ("snips", snips)):
        setattr(package, name, module)
        sys.modules[f"{package_name}.{name}"] = module
    sys.modules[package_name] = package
    return True
