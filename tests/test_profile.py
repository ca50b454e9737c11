"""`s3prl-star profile`, run as a user runs it: exact parameter counts, MACs within 1 % of the paper's."""
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


def test_star_hubert_against_the_paper():
    result = profile("star_hubert")
    assert result["params"] == 22_308_592
    assert result["macs"] == pytest.approx(463.5e9, rel=0.01)
    assert result["macs_per_second"] == pytest.approx(result["macs"] / 224.86)
    # The reference, HuBERT Base: 1669 G MACs in the paper; 94,370,944 encoder parameters (the
    # paper's 94.70M adds HuBERT's pre-training prediction heads, which no downstream uses).
    assert result["macs"] / result["macs_ratio_to_hubert_base"] == pytest.approx(1669e9, rel=0.01)
    assert result["params"] / result["params_ratio_to_hubert_base"] == pytest.approx(94_370_944)


def test_star_hubert_l_parameters():
    result = profile("star_hubert_l")
    assert result["params"] == 26_626_672
    assert result["star_hubert_l" == result["model"] and "macs"] > 463.5e9


def test_profile_text_and_bad_name():
    text = subprocess.run(
        [sys.executable, "-m", "s3prl_star.cli", "profile", "star_hubert_xs"], capture_output=True, text=True, check=True
    ).stdout
    assert "9,386,752 parameters" in text and "G MACs" in text
    bad = subprocess.run([sys.executable, "-m", "s3prl_star.cli", "profile", "distilhubert"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'distilhubert'" in bad.stderr
