"""s3prl builds HuBERT, wav2vec 2.0 and WavLM from the config stored in the checkpoint `-k` names (also a
distillation teacher's, `distill/teacher.py`) and passes its `conv_feature_layers` string to `eval`
(upstream/hubert/hubert_model.py:291, wav2vec2/wav2vec2_model.py:2358 and :2618, wavlm/WavLM.py:257).
The file loads weights-only, yet a crafted string in it would run. These patches make the three model
classes check that string first, with `s3prl_star.model.released.parse_conv_layers` (int lists and
tuples joined by `+` and `*`: what fairseq writes, nothing that runs), and make the three `*_local`
experts name the checkpoint and the key when it is refused.

In `PATCHES`, so every route that builds these models gets it: `s3prl-star downstream` / `superb`
(`-u hubert_local -k FILE`, and the upstream a stored checkpoint names), the teacher
(`Teacher.from_s3prl`, through `s3prl-star pretrain`), `S3PRLUpstream` in any program (the start-up
hook) and a linked s3prl checkout; the check runs where s3prl would evaluate the string, whichever
loader reached it.
"""
from __future__ import annotations

import functools
import importlib

from s3prl_star.model.checkpoint import CheckpointError
from s3prl_star.model.released import parse_conv_layers

# (module, class) of the models whose __init__(cfg, ...) evaluates `cfg.conv_feature_layers`
MODELS = (
    ("s3prl.upstream.hubert.hubert_model", "HubertModel"),
    ("s3prl.upstream.wav2vec2.wav2vec2_model", "Wav2Vec2Model"),
    ("s3prl.upstream.wavlm.WavLM", "WavLM"),
)
# (module, class, the checkpoint key holding the model config) of the `*_local` experts that build them
EXPERTS = (
    ("s3prl.upstream.hubert.expert", "UpstreamExpert", "model_cfg"),
    ("s3prl.upstream.wav2vec2.expert", "UpstreamExpert", "model_cfg"),
    ("s3prl.upstream.wavlm.expert", "UpstreamExpert", "cfg"),
)
EXPECTED = "a literal list of (channels, kernel, stride) tuples, e.g. '[(512, 10, 5)] + [(512, 3, 2)] * 4'"
_MARK = "_s3prl_star_checked"


class UnsafeModelConfig(ValueError):
    """A model config string s3prl would evaluate is not a literal; `key` names it."""

    def __init__(self, key: str, found: object):
        self.key = key
        super().__init__(f"{key}: found {found!r}; s3prl evaluates it as Python, so it must be {EXPECTED}")


def check_conv_feature_layers(cfg: object) -> None:
    """`cfg.conv_feature_layers` is a literal conv-layer list (UnsafeModelConfig otherwise)."""
    text = getattr(cfg, "conv_feature_layers", None)
    if not isinstance(text, str):
        raise UnsafeModelConfig("conv_feature_layers", text)
    try:
        parse_conv_layers(text)
    except (ValueError, TypeError, MemoryError, RecursionError):
        raise UnsafeModelConfig("conv_feature_layers", text) from None


def _checking_init(init):
    """`init(self, cfg, ...)` that first checks `cfg` (positional or `cfg=`)."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        check_conv_feature_layers(args[0] if args else kwargs.get("cfg"))
        init(self, *args, **kwargs)

    setattr(__init__, _MARK, True)
    return __init__


def _naming_init(init, section: str):
    """`init(self, ckpt, ...)` that turns a refused model config into a CheckpointError naming the file."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except UnsafeModelConfig as error:
            ckpt = args[0] if args else kwargs.get("ckpt")
            raise CheckpointError(f"upstream checkpoint {ckpt}: {section}.{error}") from None

    setattr(__init__, _MARK, True)
    return __init__


def _patch(module_name: str, class_name: str, wrap) -> bool:
    """Replace `class_name.__init__` in `module_name` by `wrap(__init__)` once; False when already done
    or when this s3prl has no such class."""
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return False
    if getattr(cls.__init__, _MARK, False):
        return False
    cls.__init__ = wrap(cls.__init__)
    return True


def check_conv_feature_layers_before_eval() -> bool:
    """Patch the three model classes and their experts (see the module docstring); True when it changed
    something."""
    changed = [_patch(module, name, _checking_init) for module, name in MODELS]
    changed += [_patch(module, name, functools.partial(_naming_init, section=section))
                for module, name, section in EXPERTS]
    return any(changed)
