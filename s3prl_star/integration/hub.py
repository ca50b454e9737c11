"""The `star_hubert*` upstreams for s3prl: the expert, its entry functions, and `register()`.

s3prl finds an upstream as a public callable on `s3prl.hub` and builds it with
`Upstream(ckpt=-k, model_config=-g, refresh=-r)` (docs/s3prl.md). The entry names:

- `star_hubert_local`: `-k` is a local checkpoint: this project's distiller `states-*.ckpt`,
  a file written by `s3prl_star.model.checkpoint.save_student`, or a released STaRHuBERT Lightning
  `.ckpt` with its `.yaml` given through `-g`.
- `star_hubert_url`: `-k` (and `-g`, when given) is a URL, downloaded once into s3prl's cache.
- `star_hubert`: the short name; `-k` is a path, or a URL when it starts with `http`.
- `star_hubert_with_feature`: as `star_hubert`, with the pre-transformer feature prepended to
  the hidden states (s3prl's runners pass no extra keyword, so this option is a name).
- `star_hubert_int8`: as `star_hubert`, run by onnxruntime with int8 weights on the CPU
  (`s3prl_star.model.inference`): fast frozen features for deployment; not trainable.

`upstream/star_hubert/{hubconf,expert}.py` re-export these in s3prl's layout for a linked checkout.
"""
import importlib
import os
from typing import Dict, List, Optional

from torch import Tensor, nn

# 20 ms frames at 16 kHz: the conv extractor's strides multiply to 5*2*2*2*2*2*2 = 320.
DOWNSAMPLE_RATE = 320

ENTRY_NAMES = ("star_hubert_local", "star_hubert_url", "star_hubert", "star_hubert_with_feature", "star_hubert_int8")


class UpstreamExpert(nn.Module):
    """A STaRHuBERT student as an s3prl upstream.

    forward(list of 1-D 16 kHz float waveforms) -> {"hidden_states": list of (B, T, D)}, padded to
    the longest item: the 12 transformer-layer outputs, as the released upstream returns them (so
    published SUPERB results compare), preceded by the input of layer 1 when `include_feature`.
    """

    def __init__(self, ckpt: str, model_config: Optional[str] = None, include_feature: bool = False, **kwargs):
        super().__init__()
        from s3prl_star.model.checkpoint import load_student

        self.model = load_student(ckpt, model_config)
        self.include_feature = include_feature

    def get_downsample_rates(self, key: str) -> int:
        return DOWNSAMPLE_RATE

    def forward(self, wavs: List[Tensor]) -> Dict[str, List[Tensor]]:
        hidden_states = self.model.forward_list(wavs).hidden_states
        return {"hidden_states": list(hidden_states if self.include_feature else hidden_states[1:])}


def _download(url: str, refresh: bool) -> str:
    from s3prl.util.download import _urls_to_filepaths

    return _urls_to_filepaths(url, refresh=refresh)


def star_hubert_local(ckpt: Optional[str], model_config: Optional[str] = None, include_feature: bool = False, **kwargs) -> UpstreamExpert:
    """`-k` a local checkpoint (`-g` the released `.yaml` for a released Lightning `.ckpt`)."""
    if ckpt is None:
        raise ValueError("star_hubert_local: give the checkpoint path with -k")
    if not os.path.isfile(ckpt):
        raise FileNotFoundError(f"star_hubert_local: -k/ckpt {ckpt!r} is not a file")
    if model_config is not None and not os.path.isfile(model_config):
        raise FileNotFoundError(f"star_hubert_local: -g/model_config {model_config!r} is not a file")
    return UpstreamExpert(ckpt, model_config, include_feature=include_feature)


def star_hubert_url(ckpt: str, model_config: Optional[str] = None, refresh: bool = False, include_feature: bool = False, **kwargs) -> UpstreamExpert:
    """`-k` (and `-g`, when given) a URL, downloaded once into s3prl's cache (`-r` downloads again)."""
    ckpt = _download(ckpt, refresh)
    if model_config is not None:
        model_config = _download(model_config, refresh)
    return star_hubert_local(ckpt, model_config, include_feature=include_feature)


def star_hubert(ckpt: Optional[str], model_config: Optional[str] = None, refresh: bool = False, include_feature: bool = False, **kwargs) -> UpstreamExpert:
    """The short name: `-k` a local path, or a URL when it starts with `http`."""
    if ckpt is not None and ckpt.startswith("http"):
        return star_hubert_url(ckpt, model_config, refresh=refresh, include_feature=include_feature)
    return star_hubert_local(ckpt, model_config, include_feature=include_feature)


def star_hubert_with_feature(ckpt: str, model_config: Optional[str] = None, refresh: bool = False, **kwargs) -> UpstreamExpert:
    """`star_hubert` with 13 hidden states: the pre-transformer feature, then the 12 layer outputs."""
    return star_hubert(ckpt, model_config, refresh=refresh, include_feature=True)


def star_hubert_int8(ckpt: str, model_config: Optional[str] = None, refresh: bool = False, **kwargs) -> UpstreamExpert:
    """`star_hubert` run by onnxruntime with int8 weights (s3prl_star.model.inference), for frozen features on a CPU."""
    from s3prl_star.model.inference import fast_student

    expert = star_hubert(ckpt, model_config, refresh=refresh)
    expert.model = fast_student(expert.model, "int8")
    return expert


def register() -> None:
    """Set the entry functions on `s3prl.hub` (idempotent), after making s3prl importable here.

    s3prl has no plugin mechanism: its runners look names up on the `s3prl.hub` module, so a
    process registers before the runner parses `-u` (`s3prl_star.autoload` does it on import).
    """
    from s3prl_star.integration import patches

    patches.apply()
    hub = importlib.import_module("s3prl.hub")  # also while s3prl.hub is being imported (autoload)
    for name in ENTRY_NAMES:
        setattr(hub, name, globals()[name])
