"""`s3prl-star export --format hf`: the student as `transformers.HubertModel`, loaded offline.

Parity: every hidden state of the HF model equals the student's (to float rounding) on zero-padded
batches with the attention mask, for each extractor mode, pre-LN, and a student with a projection.
The folder: written from each checkpoint format (distiller states, `save_student` file, released
`.ckpt` + `.yaml`), loaded by `AutoModel` / `AutoFeatureExtractor` with the hub offline, its model card,
and the destinations it refuses.
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from helpers import CLI, EXPERT_DIR, TINY_CONFIG, TINY_STUDENT, read_only_folder, write_released_files
from s3prl_star.model import hf, hf_export
from s3prl_star.model.checkpoint import load_student, save_student
from s3prl_star.model.config import PRESETS
from s3prl_star.model.export import main as export_main
from s3prl_star.model.profile import count_parameters, meta_preset
from s3prl_star.model.star_hubert import StarHubert

# several lengths in one zero-padded batch: the longest unpadded, the shortest a third of it
PARITY_LENGTHS = (19200, 16000, 9600, 6400)
PARITY_TOLERANCE = 1e-5  # float32 rounding; measured about 2e-6 on these students


def padded_batch(lengths=PARITY_LENGTHS):
    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor(lengths)
    waveforms = torch.randn(len(lengths), int(lengths.max()), generator=generator)
    waveforms[torch.arange(waveforms.size(1))[None, :] >= lengths[:, None]] = 0.0
    return waveforms, lengths


def differences(student: StarHubert, hf_model, lengths=PARITY_LENGTHS) -> list[float]:
    """Largest absolute difference per hidden state (every frame, padded ones too), HF vs the student."""
    waveforms, lengths = padded_batch(lengths)
    with torch.no_grad():
        ours = student.eval()(waveforms, lengths).hidden_states
        theirs = hf_model.eval()(waveforms, attention_mask=hf.attention_mask(lengths, waveforms.size(1)),
                                 output_hidden_states=True).hidden_states
    assert len(theirs) == len(ours) == student.config.encoder_layers + 1
    assert all(a.shape == b.shape for a, b in zip(ours, theirs))
    return [float((a - b).abs().max()) for a, b in zip(ours, theirs)]


def perturbed(config) -> StarHubert:
    """A random student whose norms and biases are not at their initial 1 / 0, so a weight mapped to the
    wrong place (two LayerNorms swapped, or one left at HF's initial value) changes the outputs."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = StarHubert(config).eval()
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "norm" in name or name.endswith("bias"):
                    parameter.add_(0.1 * torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module")
def tiny(tiny_student, tmp_path_factory):
    """(save_student file, model): the `tiny_student` shape (12 layers, width 32), perturbed."""
    student = perturbed(tiny_student[1].config)
    path = tmp_path_factory.mktemp("hf_student") / "tiny_star_hubert.pt"
    save_student(path, student)
    return path, student


# --- the conversion ------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["initial", "perturbed"])
def test_every_hidden_state_matches_on_a_padded_batch(weights, tiny_student, tiny):
    _, student = tiny_student if weights == "initial" else tiny
    found = differences(student, hf.to_hf_model(student))
    print("max abs difference per hidden state:", [f"{value:.1e}" for value in found])
    assert max(found) <= PARITY_TOLERANCE, found


@pytest.mark.parametrize("change", [
    {"extractor_mode": "layer_norm", "conv_bias": True},  # HF feat_extract_norm="layer"
    {"layer_norm_first": True},  # pre-LN: HF do_stable_layer_norm
    {"encoder_embed_dim": 64},  # conv width 48 != 64: the student's post_extract_proj is HF's projection
    {},  # TINY_CONFIG as it is: GroupNorm extractor, post-LN, identity projection
], ids=["layer_norm_extractor", "pre_ln", "projection", "default"])
def test_each_student_shape_maps(change):
    import transformers

    student = perturbed(dataclasses.replace(TINY_CONFIG, **change))
    found = differences(student, hf.to_hf_model(student))
    if change.get("layer_norm_first") and int(transformers.__version__.split(".")[0]) >= 5:
        assert max(found[:-1]) <= PARITY_TOLERANCE, found
        pytest.xfail("transformers 5 records a pre-LN encoder's hidden_states[-1] before its final LayerNorm "
                     "(last_hidden_state has it; docs/export.md)")
    assert max(found) <= PARITY_TOLERANCE, found


def test_config_is_explicit_and_hf_has_the_identity_projection(tiny_student):
    _, student = tiny_student
    config = hf.hubert_config(student.config)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (32, 12, 64)
    assert list(config.conv_dim) == [c for c, _, _ in student.config.conv_layers]
    assert (config.feat_extract_norm, config.do_stable_layer_norm, config.conv_bias) == ("group", False, False)
    assert (config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups) == (16, 4)
    assert (config.mask_time_prob, config.mask_feature_prob, config.layerdrop) == (0.0, 0.0, 0.0)
    assert (config.hidden_dropout, config.feat_proj_dropout) == (0.1, 0.05)
    hf_model = hf.to_hf_model(student)
    projection = hf_model.feature_projection.projection
    assert torch.equal(projection.weight, torch.eye(32)) and torch.equal(projection.bias, torch.zeros(32))
    assert count_parameters(hf_model) == count_parameters(student) + 32 * 32 + 32


def test_star_hubert_parameter_counts():
    """docs/export.md's numbers: 22,308,592 (the student) -> 22,495,648 (HF, with the identity)."""
    config = PRESETS["star_hubert"]
    assert count_parameters(meta_preset(config)) == 22_308_592
    assert hf.identity_projection_parameters(config) == 432 * 432 + 432 == 187_056
    from transformers import HubertModel

    assert count_parameters(HubertModel(hf.hubert_config(config))) == 22_495_648
    assert hf.identity_projection_parameters(dataclasses.replace(config, encoder_embed_dim=768,
                                                                 encoder_attention_heads=12)) == 0


def test_an_unknown_or_missing_key_is_named(tiny_student):
    _, student = tiny_student
    weights = student.state_dict()
    with pytest.raises(hf.HfConversionError, match=r"encoder\.layers\.0\.adapter\.weight"):
        hf.convert_state_dict({**weights, "encoder.layers.0.adapter.weight": torch.zeros(1)}, source="x.pt")
    broken = StarHubert(student.config)
    del broken.encoder.layers[0].fc1  # the renamed weights then lack HF's intermediate_dense
    broken.encoder.layers[0].register_module("fc1", None)
    with pytest.raises(hf.HfConversionError, match=r"missing HF keys: \['encoder\.layers\.0\.feed_forward\.intermediate_dense"):
        hf.to_hf_model(broken)


# --- the folder, through the export command --------------------------------------------------------------


def distiller_states(student: StarHubert, teacher_path: str) -> dict:
    """A `states-10.ckpt` as `s3prl-star pretrain` writes it (s3prl's runner + this project's expert)."""
    runner = yaml.safe_load((EXPERT_DIR / "config_runner.yaml").read_text())
    return {
        "Student": {"config": student.config.to_dict(), "state_dict": student.state_dict()},
        "Objective": {},
        "Upstream_Config": {
            "student": {"preset": "star_hubert", **{k: list(map(list, v)) if k == "conv_layers" else v
                                                   for k, v in TINY_STUDENT.items()}},
            "teacher": {"name": "hubert_local", "ckpt": teacher_path, "model_config": None, "layer_map": None},
            "objective": {"kind": "star", "layerwise_weight": 1.0, "intra_weight": 1.0, "attention_weight": 0.0},
            "precision": "bf16",
        },
        "Data": {"batches_done": 20},
        "RNG": {"torch": [torch.get_rng_state()]},
        "Optimizer": {},
        "Step": 10,
        "Args": argparse.Namespace(upstream="star_hubert", config="config_runner.yaml"),
        "Config": runner,
    }


@pytest.fixture(scope="module")
def checkpoints(tiny, tiny_hubert_teacher, tmp_path_factory):
    """{format: (checkpoint, released .yaml or None)} of the same tiny student."""
    path, student = tiny
    folder = tmp_path_factory.mktemp("hf_checkpoints")
    torch.save(distiller_states(student, str(tiny_hubert_teacher)), folder / "states-10.ckpt")
    teacher = torch.load(tiny_hubert_teacher, map_location="cpu", weights_only=True)["model_weight"]
    released, template = write_released_files(folder, student, teacher, with_hyper_parameters=False)
    return {"distiller": (folder / "states-10.ckpt", None), "student_file": (path, None),
            "released": (released, template)}


def run_export(checkpoint, output, model_config=None, capsys=None) -> tuple[int, str]:
    """`s3prl-star export CKPT [-g YAML] --format hf -o OUTPUT` in this process: (status, stdout + stderr)."""
    argv = [str(checkpoint), "--format", "hf", "-o", str(output)] + (["-g", str(model_config)] if model_config else [])
    status = export_main(argv)
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def assert_loads_as_the_student(folder, student: StarHubert) -> None:
    """AutoModel / AutoFeatureExtractor read the folder alone (local files only); the model's weights are
    the converted student's bit for bit and its hidden states the student's."""
    from transformers import AutoFeatureExtractor, AutoModel, HubertModel, Wav2Vec2FeatureExtractor

    extractor = AutoFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
    assert type(extractor) is Wav2Vec2FeatureExtractor
    assert (extractor.sampling_rate, extractor.do_normalize, extractor.return_attention_mask) == (16000, False, True)
    loaded = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    assert type(loaded) is HubertModel
    expected = hf.to_hf_model(student).state_dict()
    state = loaded.state_dict()
    assert sorted(state) == sorted(expected) and all(torch.equal(state[k], expected[k]) for k in expected)
    assert max(differences(student, loaded, (12000, 7000))) <= PARITY_TOLERANCE


@pytest.mark.parametrize("kind", ["distiller", "student_file", "released"])
def test_export_each_checkpoint_format(kind, checkpoints, tiny, tiny_hubert_teacher, tmp_path, capsys):
    checkpoint, model_config = checkpoints[kind]
    status, output = run_export(checkpoint, tmp_path / "hf", model_config, capsys)
    assert status == 0, output
    assert "wrote Hugging Face model to" in output
    folder = tmp_path / "hf"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*hf_export.MODEL_FILES, "README.md", hf_export.MANIFEST])
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary folder left beside it
    student = tiny[1]
    assert_loads_as_the_student(folder, student)
    card = (folder / "README.md").read_text()
    params = count_parameters(student)
    assert f"| parameters (the student) | {params:,} |" in card
    assert f"| parameters (this HF model) | {params + 32 * 32 + 32:,} |" in card
    assert f"{params:,} -> {params + 32 * 32 + 32:,}" in card and "identity" in card
    assert "G |" in card and "AutoModel.from_pretrained" in card and "hidden_states[1:]" in card
    assert "license" in card.lower() and "\nlicense:" not in card  # no license invented
    if kind == "distiller":
        assert "`hubert_local`" in card and "`tiny_hubert.pt`" in card and str(tiny_hubert_teacher.parent) not in card
        assert "layerwise_weight: 1.0" in card and "| step saved | `10` |" in card and "AdamW" in card
    elif kind == "student_file":
        assert card.count("Not recorded in the checkpoint.") == 2
    else:
        assert "`hubert_base_ls960.pt`" in card and "| epoch saved | `2` |" in card and "AdamW_with_schedule" in card
        assert "star.yaml" in card


def test_reexport_replaces_its_own_folder_only(checkpoints, tmp_path, capsys):
    checkpoint, _ = checkpoints["student_file"]
    folder = tmp_path / "hf"
    folder.mkdir()  # an empty folder is taken
    assert run_export(checkpoint, folder, capsys=capsys)[0] == 0
    manifest = json.loads((folder / hf_export.MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted([*hf_export.MODEL_FILES, "README.md"])
    status, output = run_export(checkpoint, folder, capsys=capsys)  # its own previous export: replaced
    assert status == 0, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # the previous folder is gone, nothing else
    (folder / "tokenizer.json").write_text("{}")  # a file added beside the export: kept, and refused
    status, output = run_export(checkpoint, folder, capsys=capsys)
    assert status == 2 and "files this tool did not write: ['tokenizer.json']" in output, output
    assert (folder / "tokenizer.json").read_text() == "{}"
    (folder / "tokenizer.json").unlink()
    with open(folder / "README.md", "a") as card:  # a user's edit is not the tool's file any more
        card.write("\nlicense: mine\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    status, output = run_export(checkpoint, folder, capsys=capsys)
    assert status == 2 and "files changed since this tool wrote them: ['README.md']" in output, output
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_refuses_a_folder_it_did_not_write(checkpoints, tmp_path, capsys):
    checkpoint, _ = checkpoints["student_file"]
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    status, output = run_export(checkpoint, folder, capsys=capsys)
    assert status == 2 and f"-o {folder}" in output and "did not write" in output and "notes.txt" in output, output
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"] and (folder / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no temporary folder left
    status, output = run_export(checkpoint, folder / "notes.txt", capsys=capsys)  # a file
    assert status == 2 and "is not a folder" in output, output
    other = tmp_path / "other_hf_model"  # another model's folder, with the names this tool writes
    other.mkdir()
    for name in hf_export.MODEL_FILES:
        (other / name).write_text("theirs")
    status, output = run_export(checkpoint, other, capsys=capsys)
    assert status == 2 and "did not write" in output and "config.json" in output, output
    assert all((other / name).read_text() == "theirs" for name in hf_export.MODEL_FILES)


def test_refuses_the_checkpoint_as_output(checkpoints, tmp_path, capsys):
    checkpoint, _ = checkpoints["student_file"]
    before = checkpoint.read_bytes()
    link = tmp_path / "link.pt"
    link.symlink_to(checkpoint)
    for output in (checkpoint, link):
        status, printed = run_export(checkpoint, output, capsys=capsys)
        assert status == 2 and "the same file" in printed, printed
    assert checkpoint.read_bytes() == before


def test_read_only_destination_is_a_clear_error(checkpoints, tmp_path, capsys):
    checkpoint, _ = checkpoints["student_file"]
    with read_only_folder(tmp_path / "ro") as folder:
        status, output = run_export(checkpoint, folder / "hf", capsys=capsys)
        assert status == 1 and f"cannot write {folder / 'hf'}" in output, output
        assert list(folder.iterdir()) == []


def test_a_failed_check_leaves_nothing(checkpoints, tmp_path, capsys, monkeypatch):
    """The folder is checked before it is renamed into place: weights that do not reproduce the student
    (here one LayerNorm bias shifted) write no DIR and exit 1, naming the first hidden state that differs."""
    checkpoint, _ = checkpoints["student_file"]
    convert = hf.hf_state_dict

    def shifted(model, source="student"):
        weights = convert(model, source)
        weights["encoder.layers.2.final_layer_norm.bias"] = weights["encoder.layers.2.final_layer_norm.bias"] + 0.1
        return weights

    monkeypatch.setattr(hf, "hf_state_dict", shifted)
    status, output = run_export(checkpoint, tmp_path / "hf", capsys=capsys)
    assert status == 1 and f"{tmp_path / 'hf'}: the HF model's hidden state 3 differs" in output, output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_console_script_round_trip_offline(tiny, tmp_path):
    """The console script with the hub offline (and any connection refused), then a fresh process that
    only has the folder: AutoModel / AutoFeatureExtractor give the student's hidden states."""
    checkpoint, student = tiny
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "OMP_NUM_THREADS": "1"}
    folder = tmp_path / "star_hubert_hf"
    result = subprocess.run([CLI, "export", str(checkpoint), "--format", "hf", "-o", str(folder)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    script = f"""
import sys, torch
from transformers import AutoFeatureExtractor, AutoModel
extractor = AutoFeatureExtractor.from_pretrained({str(folder)!r})
model = AutoModel.from_pretrained({str(folder)!r}).eval()
torch.manual_seed(3)
waveforms = [torch.randn(n).numpy() for n in (16000, 8800, 24000)]
inputs = extractor(waveforms, sampling_rate=16000, padding=True, return_tensors="pt")
with torch.no_grad():
    states = model(**inputs, output_hidden_states=True).hidden_states
torch.save({{"inputs": inputs["input_values"], "mask": inputs["attention_mask"], "states": list(states)}}, sys.argv[1])
"""
    saved = tmp_path / "states.pt"
    loaded = subprocess.run([sys.executable, "-c", script, str(saved)], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=600)
    assert loaded.returncode == 0, loaded.stderr
    result = torch.load(saved, weights_only=True)
    with torch.no_grad():
        ours = student(result["inputs"], result["mask"].sum(-1)).hidden_states
    assert len(result["states"]) == len(ours) == 13
    assert max(float((a - b).abs().max()) for a, b in zip(ours, result["states"])) <= PARITY_TOLERANCE
    assert load_student(checkpoint).config == student.config
