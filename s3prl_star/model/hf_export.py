"""`s3prl-star export CKPT --format hf -o DIR`: a folder `transformers` loads offline (docs/export.md).

DIR holds `config.json` + `model.safetensors` (`transformers.AutoModel`), `preprocessor_config.json`
(`AutoFeatureExtractor`: a `Wav2Vec2FeatureExtractor`), the model card `README.md` (`hf_card`) and
`.s3prl-star-export.json` (`MANIFEST`), the sha256 of each file this tool wrote. The folder is built in a temporary sibling,
reloaded from there with `AutoModel.from_pretrained(local_files_only=True)` and checked against the
student on a padded batch, then renamed into place: DIR is never left half-written and appears only
once it checks. An existing DIR is replaced only when it is empty or holds exactly the files a previous
export wrote, unchanged; anything else in it is named and nothing is touched.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from s3prl_star.model import hf, hf_card
from s3prl_star.model.checkpoint import read_checkpoint
from s3prl_star.model.config import SAMPLE_RATE
from s3prl_star.model.star_hubert import StarHubert

MANIFEST = ".s3prl-star-export.json"
WRITTEN_BY = "s3prl-star export --format hf"
MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
CARD = "README.md"
# the check's padded batch (samples at 16 kHz): three lengths, the longest 1 s
CHECK_LENGTHS = (16000, 11200, 6400)
# largest accepted difference per hidden state, relative to its largest magnitude (at least 1)
TOLERANCE = 1e-4


class HfExportError(ValueError):
    """The destination is refused, or the folder does not hold what it should; the message names it."""


class HfCheckError(HfExportError):
    """The reloaded HF model does not compute the student's hidden states; the message names the state."""


@dataclass(frozen=True)
class HfExport:
    """What an export wrote: the folder and the largest difference from the student per hidden state."""

    directory: Path
    differences: list[float]


def check_destination(directory: Path) -> None:
    """An HfExportError unless `directory` is absent, an empty folder, or a previous export left unchanged
    (only the files its MANIFEST lists, with their sha256): nothing else is ever replaced."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise HfExportError(f"-o {directory}: exists and is not a folder; expected a folder for the HF model")
    present = sorted(entry.name for entry in directory.iterdir())
    if not present:
        return
    written = _manifest(directory)
    if written is None:
        raise HfExportError(f"-o {directory}: a non-empty folder this tool did not write (no {MANIFEST}; holds "
                            f"{present[:10]}); expected a new or empty folder, or a previous HF export")
    foreign = [name for name in present if name not in written and name != MANIFEST]
    changed = [name for name, digest in written.items() if name in present and _sha256(directory / name) != digest]
    if foreign or changed:
        found = ([f"files this tool did not write: {foreign}"] if foreign else []) + (
            [f"files changed since this tool wrote them: {changed}"] if changed else [])
        raise HfExportError(f"-o {directory}: a previous HF export, but it holds {'; and '.join(found)}; "
                            "move them away or choose another folder (nothing was replaced)")


def _manifest(directory: Path) -> dict[str, str] | None:
    """{file name: sha256} from a previous export's MANIFEST, or None where there is none or it is not ours."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) and data.get("written_by") == WRITTEN_BY else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return None
    if any(os.sep in name or name in ("", ".", "..", MANIFEST) for name in files):
        return None
    return files


def _sha256(path: Path) -> str | None:
    """The sha256 of a regular file's content; None for anything else (a folder, a link)."""
    if path.is_symlink() or not path.is_file():
        return None
    return hf_card.file_sha256(path)


def check_batch() -> tuple[list, Tensor, Tensor]:
    """The check's padded batch: (list of 1-D float32 numpy waveforms, zero-padded (B, S) tensor, lengths)."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor(CHECK_LENGTHS)
    waveforms = [torch.randn(length, generator=generator) for length in CHECK_LENGTHS]
    padded = torch.nn.utils.rnn.pad_sequence(waveforms, batch_first=True)
    return [waveform.numpy() for waveform in waveforms], padded, lengths


def hidden_state_differences(directory: Path, model: StarHubert, label: Path | None = None) -> list[float]:
    """Largest absolute difference per hidden state (all frames, padded ones too) between the folder's
    HF model, fed by its own feature extractor, and `model` on `check_batch()`; loaded offline. An
    HfCheckError names `label` (the destination; default `directory`) and the first state that differs."""
    label = directory if label is None else label
    from transformers import AutoFeatureExtractor, AutoModel

    extractor = AutoFeatureExtractor.from_pretrained(str(directory), local_files_only=True)
    loaded = AutoModel.from_pretrained(str(directory), local_files_only=True).eval()
    arrays, padded, lengths = check_batch()
    inputs = extractor(arrays, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = loaded(**inputs, output_hidden_states=True).hidden_states
        ours = model.eval()(padded, lengths).hidden_states
    if len(theirs) != len(ours):
        raise HfCheckError(f"{label}: the HF model returns {len(theirs)} hidden states, the student {len(ours)}")
    differences = []
    for index, (state, expected) in enumerate(zip(theirs, ours)):
        if state.shape != expected.shape:
            raise HfCheckError(f"{label}: hidden state {index} has shape {tuple(state.shape)}, "
                                f"the student's {tuple(expected.shape)}")
        differences.append(float((state - expected).abs().max()))
        bound = TOLERANCE * max(1.0, float(expected.abs().max()))
        if not differences[-1] <= bound:
            raise HfCheckError(f"{label}: the HF model's hidden state {index} differs from the student's by "
                                f"{differences[-1]:.3g} (at most {bound:.3g} expected); nothing was written")
    return differences


def _write_files(model: StarHubert, folder: Path, source: str) -> None:
    """The HF model (safetensors) and the feature extractor's config into `folder`."""
    hf.to_hf_model(model, source).save_pretrained(str(folder))  # safetensors
    hf.feature_extractor().save_pretrained(str(folder))
    present = sorted(entry.name for entry in folder.iterdir())
    if present != sorted(MODEL_FILES):
        raise HfExportError(f"{folder}: transformers wrote {present}; expected {sorted(MODEL_FILES)}")


def _finish(folder: Path, card: str) -> None:
    """The card and MANIFEST beside the model files, every file flushed to disk."""
    (folder / CARD).write_text(card)
    files = {name: _sha256(folder / name) for name in (*MODEL_FILES, CARD)}
    (folder / MANIFEST).write_text(json.dumps({"written_by": WRITTEN_BY, "files": files}, indent=1) + "\n")
    mode = 0o666 & ~_umask()  # safetensors writes its file owner-only
    for name in (*files, MANIFEST):
        os.chmod(folder / name, mode)
        with open(folder / name, "rb") as file:
            os.fsync(file.fileno())


def _install(folder: Path, directory: Path) -> None:
    """Rename `folder` to `directory`; a previous export there (checked by `check_destination`) is moved
    aside first and removed only once the new folder is in place (put back if the rename fails)."""
    if not directory.exists() or not any(directory.iterdir()):
        os.replace(folder, directory)  # onto nothing, or onto an empty folder: one atomic rename
        return
    check_destination(directory)  # again, just before replacing it
    aside = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.old-"))
    os.replace(directory, aside)
    try:
        os.replace(folder, directory)
    except OSError:
        os.replace(aside, directory)
        raise
    shutil.rmtree(aside)  # only the files a previous export wrote


def export_hf(model: StarHubert, checkpoint, output, model_config=None) -> HfExport:
    """Write the HF folder of `model` (loaded from `checkpoint`, with the released `.yaml` `model_config`)
    at `output`, check it and rename it into place (module docstring)."""
    directory = Path(os.path.realpath(output))
    check_destination(directory)
    origin = hf_card.provenance(checkpoint, read_checkpoint(checkpoint), model_config)
    directory.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        folder.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would make the folder private
        _write_files(model, folder, str(checkpoint))
        differences = hidden_state_differences(folder, model, label=directory)
        _finish(folder, hf_card.model_card(model, origin, max(differences), CHECK_LENGTHS, directory.name))
        _install(folder, directory)
    finally:
        if folder.exists():
            shutil.rmtree(folder)  # the temporary folder this call made
    return HfExport(directory, differences)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main_hf(model: StarHubert, checkpoint, output, model_config=None) -> int:
    """`s3prl-star export --format hf`: export, report in one line; a refused destination or a
    checkpoint that does not convert is exit status 2, a failed write or check 1."""
    try:
        result = export_hf(model, checkpoint, output, model_config)
    except (HfExportError, hf.HfConversionError) as error:
        print(f"s3prl-star export: {error}", file=sys.stderr)
        return 1 if isinstance(error, HfCheckError) else 2
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in ("transformers", "safetensors"):
            raise
        print(f"s3prl-star export: --format hf needs the transformers package ({error.name} is not installed): "
              "pip install transformers", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"s3prl-star export: cannot write {output}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(f"wrote Hugging Face model to {result.directory} (AutoModel / AutoFeatureExtractor; every hidden state "
          f"within {max(result.differences):.1e} of the student's on a padded batch)")
    return 0
