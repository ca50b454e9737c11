"""`s3prl-star profile`, run as a user runs it: exact parameter counts, MACs within 1 % of the paper's.

Each profile counts the MACs of 32 forwards (the SUPERB protocol lengths) for the preset and for HuBERT
Base, about 7 s on CPU, so those tests are slow; the presets' parameter counts also run fast in
test_model.py."""
import json
import subprocess
import sys

import pytest

from s3prl_star.model.profile import SUPERB_PROTOCOL_LENGTHS


def profile(name: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "s3prl_star.cli", "profile", name, "--json"],
        capture_output=True, text=True, check=True,
    )
    return json.loads(result.stdout)


def test_protocol_lengths_are_the_superb_ones():
    assert len(SUPERB_PROTOCOL_LENGTHS) == 32
    assert sum(SUPERB_PROTOCOL_LENGTHS) / 16000 == pytest.approx(224.86)


@pytest.mark.slow
def test_star_hubert_against_the_paper():
    result = profile("star_hubert")
    assert result["params"] == 22_308_592
    assert result["macs"] == pytest.approx(463.5e9, rel=0.01)
    assert result["macs_per_second"] == pytest.approx(result["macs"] / 224.86)
    # The reference, HuBERT Base: 1669 G MACs in the paper; 94,370,944 encoder parameters (the
    # paper's 94.70M adds HuBERT's pre-training prediction heads, which no downstream uses).
    assert result["macs"] / result["macs_ratio_to_hubert_base"] == pytest.approx(1669e9, rel=0.01)
    assert result["params"] / result["params_ratio_to_hubert_base"] == pytest.approx(94_370_944)


@pytest.mark.slow
def test_star_hubert_l_parameters():
    result = profile("star_hubert_l")
    assert result["model"] == "star_hubert_l"
    assert result["params"] == 26_626_672
    assert result["macs"] > 463.5e9  # more than star_hubert's (the paper's 463.5 G)


@pytest.mark.slow
def test_profile_prints_the_counts_as_text():
    text = subprocess.run(
        [sys.executable, "-m", "s3prl_star.cli", "profile", "star_hubert_xs"], capture_output=True, text=True, check=True
    ).stdout
    assert "9,386,752 parameters" in text and "G MACs" in text


def test_profile_refuses_an_unknown_preset():
    bad = subprocess.run([sys.executable, "-m", "s3prl_star.cli", "profile", "distilhubert"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'distilhubert'" in bad.stderr
