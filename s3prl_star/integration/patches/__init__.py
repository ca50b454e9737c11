"""Every patch this project makes to s3prl 0.4.18 and to the libraries it calls, in one place.

`PATCHES` (applied by `apply()`) makes s3prl import and run on the tested stack (torch >= 2.6,
torchaudio >= 2.9, huggingface_hub >= 1; docs/s3prl.md says what breaks without each). Each patch
first probes whether the installed library still has the feature it replaces and does nothing if
so, so `apply()` is idempotent and harmless on older stacks; site-packages is never edited.
Apply it before `import s3prl.hub` or running an s3prl runner. One entry is not about the stack:
`upstream_configs` makes s3prl's HuBERT / wav2vec 2.0 / WavLM check a checkpoint's `conv_feature_layers`
string before evaluating it (a crafted `-k` file or teacher would run code otherwise); it is in `PATCHES`
so that every route that builds those models has it.

The other modules here patch one runner or one task, and are applied by the command that runs it:
`runner_checkpoints` (both runners: atomic checkpoints, deferred pruning), `pretrain_runner`
(the pretrain Runner's extensions), `voxceleb_caches` and `asv_device` (SID and ASV in
`s3prl-star downstream`), `sample_rates` (the tasks whose loader does not resample refuse audio that is
not 16 kHz, naming the file).
"""
from __future__ import annotations

import importlib.util

from s3prl_star.integration.patches import (asv_device, audio_io, ctc_corpus, hf_hub, runner_args, sample_rates, sox_effects,
                                            upstream_configs, voxceleb_caches)

PATCHES = (
    audio_io.route_load_through_soundfile,
    audio_io.add_info,
    audio_io.add_set_audio_backend,
    sox_effects.add_sox_effects,
    runner_args.allow_namespace_in_weights_only_load,
    hf_hub.add_removed_hf_hub_names,
    ctc_corpus.add_ctc_corpus_readers,
    upstream_configs.check_conv_feature_layers_before_eval,  # last: it imports s3prl's model modules
)


S3PRL_MISSING = ("s3prl is not installed: pip install 's3prl-star[s3prl]' (the PyPI s3prl 0.4.18), or "
                 "'s3prl-star[espnet]' beside ESPnet's espnet-s3prl (docs/install.md)")


def apply() -> list[str]:
    """Apply every patch of `PATCHES` this stack needs; returns the names of those that changed something.
    A ModuleNotFoundError saying which extra to install when this environment has no s3prl."""
    if importlib.util.find_spec("s3prl") is None:
        raise ModuleNotFoundError(S3PRL_MISSING, name="s3prl")
    return [patch.__name__ for patch in PATCHES if patch()]


# `s3prl-star downstream -d TASK`: the patches of that task's s3prl modules, each taking the experiment
# folder and returning what it did.
DOWNSTREAM_TASK_PATCHES = {
    "voxceleb1": (voxceleb_caches.isolate_sid_file_list_cache, sample_rates.refuse_other_rates_in_voxceleb1),
    "sv_voxceleb1": (voxceleb_caches.keep_asv_length_cache_in, asv_device.run_expert_on_its_device),
    "fluent_commands": (sample_rates.refuse_other_rates_in_fluent_commands,),
    "ctc": (sample_rates.refuse_other_rates_in_ctc,),
    "asr": (sample_rates.refuse_other_rates_in_asr,),
    "diarization": (sample_rates.refuse_other_rates_in_diarization,),
}


def apply_for_downstream_task(task: str | None, expdir: str) -> list[str]:
    """Apply the patches `s3prl-star downstream -d TASK` needs; returns what each did."""
    return [message for patch in DOWNSTREAM_TASK_PATCHES.get(task, ()) if (message := patch(expdir))]
