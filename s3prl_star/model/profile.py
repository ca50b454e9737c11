"""Parameters and MACs under the SUPERB challenge protocol (docs/superb.md, MACs).

MACs are counted by `torch.utils.flop_counter` (MACs = FLOPs / 2 for matmul and convolution) on the
meta device, so no arithmetic is done. Attention runs through the explicit path, whose QK^T and
attention x V products the counter sees (the fused CPU kernel is invisible to it); norms,
activations, softmax and biases are not counted, as in the protocol.
"""
from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from s3prl_star.model.config import PRESETS, SAMPLE_RATE
from s3prl_star.model.star_hubert import StarHubert

# The (82 i + 1)-th shortest of LibriSpeech test-clean's 2620 utterances, i = 0..31, in samples.
SUPERB_PROTOCOL_LENGTHS = (
    20560, 34560, 38480, 42560, 45600, 48720, 52000, 55120, 59120, 62720, 66400, 71200, 75200, 78640,
    82800, 87520, 92720, 98560, 104400, 111120, 118480, 125040, 132720, 142640, 154000, 166720, 180880,
    197920, 217920, 239280, 268160, 326000,
)
REFERENCE = "hubert_base"


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def count_macs(model: StarHubert, lengths=SUPERB_PROTOCOL_LENGTHS) -> int:
    """Sum of the MACs of one forward per length (batch 1), on a meta-device model of `model`'s shape."""
    meta_model = model if next(model.parameters()).is_meta else meta_preset(model.config)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for length in lengths:
            meta_model(torch.empty(1, length, device="meta"), need_attention=True)
    return counter.get_total_flops() // 2


def meta_preset(name_or_config) -> StarHubert:
    """A model of the preset's shape on the meta device: shapes without weights or initialisation cost."""
    config = PRESETS[name_or_config] if isinstance(name_or_config, str) else name_or_config
    with torch.device("meta"):
        return StarHubert(config).eval()


def profile(name: str) -> dict:
    model, reference = meta_preset(name), meta_preset(REFERENCE)
    params, macs = count_parameters(model), count_macs(model)
    seconds = sum(SUPERB_PROTOCOL_LENGTHS) / SAMPLE_RATE
    return {
        "model": name,
        "params": params,
        "macs": macs,
        "macs_per_second": macs / seconds,
        "params_ratio_to_hubert_base": params / count_parameters(reference),
        "macs_ratio_to_hubert_base": macs / count_macs(reference),
        "utterances": len(SUPERB_PROTOCOL_LENGTHS),
        "audio_seconds": seconds,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="s3prl-star profile", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(PRESETS), help="model preset (random weights)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = profile(args.name)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['model']}: {result['params']:,} parameters "
              f"({100 * result['params_ratio_to_hubert_base']:.1f} % of HuBERT Base)")
        print(f"  {result['macs'] / 1e9:.1f} G MACs over the {result['utterances']} SUPERB protocol utterances "
              f"({result['audio_seconds']:.2f} s), {result['macs_per_second'] / 1e9:.2f} G MACs per second of audio, "
              f"{100 * result['macs_ratio_to_hubert_base']:.1f} % of HuBERT Base")
    return 0
