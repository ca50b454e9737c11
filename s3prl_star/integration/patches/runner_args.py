"""torch >= 2.6 loads with `weights_only=True`; s3prl's pretrain and downstream runners pickle their
`argparse.Namespace` arguments (`Args`) into every checkpoint they resume or evaluate from.
"""
from __future__ import annotations

import argparse

import torch


def allow_namespace_in_weights_only_load() -> bool:
    """Both runners save `{"Args": argparse.Namespace, "Config": dict, <state dicts>...}`."""
    serialization = torch.serialization
    if not hasattr(serialization, "add_safe_globals") or argparse.Namespace in serialization.get_safe_globals():
        return False
    serialization.add_safe_globals([argparse.Namespace])
    return True
