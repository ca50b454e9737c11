"""huggingface_hub >= 1.0 removed `HfFolder` and `Repository`, which s3prl's downstream runner imports
at module level (it uses them only for `--hub huggingface` / `--push_to_hf_hub`).
"""
from __future__ import annotations


class _RemovedFromHfHub(type):
    """Stands in for a class huggingface_hub 1.0 removed: importable, but any use raises."""

    def _removed(cls, *_args, **_kwargs):
        raise RuntimeError(
            f"huggingface_hub.{cls.__name__} was removed in huggingface_hub 1.0; s3prl uses it only for "
            "--hub huggingface and --push_to_hf_hub, which need huggingface_hub<1.0"
        )

    __call__ = _removed

    def __getattr__(cls, name):
        if name.startswith("__"):  # keep hasattr/inspect/pickle probes working
            raise AttributeError(name)
        cls._removed()


def add_removed_hf_hub_names() -> bool:
    import huggingface_hub

    missing = [name for name in ("HfFolder", "Repository") if not hasattr(huggingface_hub, name)]
    for name in missing:
        setattr(huggingface_hub, name, _RemovedFromHfHub(name, (), {"__module__": "huggingface_hub"}))
    return bool(missing)
