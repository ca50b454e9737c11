"""Beside ESPnet: ESPnet's s3prl fork (`espnet-s3prl`) and ESPnet itself installed from the package registry
into a new virtual environment, then this package's wheel with its `espnet` extra. The fork's `s3prl`
stays (the extra does not pull the PyPI s3prl), `star_hubert` is an upstream of the fork in a process
that never imports s3prl_star (the start-up hook), its features are the student's, and ESPnet's own
`S3prlFrontend` builds it from an ESPnet config's `frontend_conf`.

Dependencies the registry would give again (torch, ...) come from the test environment's site-packages
through a plain path entry (helpers.wheel_venv), so the install takes about two minutes.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from helpers import UPSTREAM_PROBE, assert_upstream_states, build_wheel, clean_tree, pip_install, wheel_venv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(clean_tree(tmp_path_factory.mktemp("source")), tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def espnet(tmp_path_factory, wheel) -> dict:
    """espnet-s3prl and espnet from the registry, then `WHEEL[espnet]` (resolved by pip, the fork installed)."""
    venv = wheel_venv(tmp_path_factory.mktemp("espnet") / "venv")
    pip_install(venv, "espnet-s3prl", "espnet")
    pip_install(venv, f"{wheel}[espnet]")
    return venv


def run(venv: dict, cwd: Path, code: str, *arguments: str):
    import subprocess

    return subprocess.run([str(venv["python"]), "-c", code, *map(str, arguments)], cwd=cwd, env=venv["env"],
                          capture_output=True, text=True, timeout=600)


def test_the_wheel_asks_for_s3prl_only_through_its_s3prl_extra(wheel):
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA")))
    requirements = [line.split(":", 1)[1].strip() for line in metadata.decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    on_s3prl = [requirement for requirement in requirements if requirement.split(";")[0].strip().startswith("s3prl")]
    assert on_s3prl and all('extra == "s3prl"' in requirement for requirement in on_s3prl), on_s3prl
    assert any(requirement.startswith("espnet-s3prl") and 'extra == "espnet"' in requirement for requirement in requirements)


def test_the_espnet_extra_keeps_the_fork(espnet, tmp_path):
    assert not list(espnet["purelib"].glob("s3prl-*.dist-info")), "the PyPI s3prl was installed beside the fork"
    assert list(espnet["purelib"].glob("espnet_s3prl-*.dist-info"))
    found = run(espnet, tmp_path, "import s3prl, s3prl_star; print(s3prl.__file__); print(s3prl_star.__file__)")
    assert found.returncode == 0, found.stderr[-2000:]
    s3prl_file, package_file = map(Path, found.stdout.split())
    assert s3prl_file.is_relative_to(espnet["purelib"]) and package_file.is_relative_to(espnet["purelib"])


def test_star_hubert_is_an_upstream_of_the_fork_with_the_students_features(espnet, tmp_path, tiny_student):
    path, model = tiny_student
    # registered by the start-up hook: this program never imports s3prl_star
    code = UPSTREAM_PROBE + "assert 's3prl_star.integration.hub' in sys.modules\n"
    result = run(espnet, tmp_path, code, path, tmp_path / "states.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_upstream_states(tmp_path / "states.pt", model)


def test_espnets_s3prl_frontend_builds_star_hubert_from_its_config(espnet, tmp_path, tiny_student):
    """`frontend: s3prl` with `frontend_conf: {upstream: star_hubert, path_or_url: CKPT}`, as an ESPnet recipe's
    yaml gives it: ESPnet checks the name against S3PRLUpstream.available_names() in a process that never
    imports s3prl_star."""
    path, model = tiny_student
    code = ("import sys, torch\n"
            "from espnet2.asr.frontend.s3prl import S3prlFrontend\n"
            "frontend = S3prlFrontend(frontend_conf={'upstream': 'star_hubert', 'path_or_url': sys.argv[1]},\n"
            "                         multilayer_feature=True).eval()\n"
            "with torch.no_grad():\n"
            "    features, lengths = frontend(torch.randn(2, 16000), torch.tensor([16000, 12000]))\n"
            "print(json.dumps([list(features.shape), lengths.tolist(), frontend.output_size()]))\n")
    result = run(espnet, tmp_path, "import json\n" + code, path)
    assert result.returncode == 0, result.stderr[-3000:]
    shape, lengths, size = json.loads(result.stdout.strip().splitlines()[-1])
    width = model.config.encoder_embed_dim  # the featurizer's weighted sum of the 12 layer outputs
    assert shape == [2, 50, width] and size == width and lengths == [50, 38]
