"""Shared fixtures: generated speech and random-initialised teachers, made once per test session.

Nothing is downloaded: the corpus is espeak-ng speech in LibriSpeech layout and the teachers are
random weights saved in the checkpoint formats s3prl's `*_local` upstreams read.
"""
import pytest


@pytest.fixture(scope="session")
def mini_librispeech(tmp_path_factory):
    """A LibriSpeech-layout corpus root with `train-clean-100` and `dev-clean` (espeak-ng speech)."""
    from s3prl_star.synthetic import make_librispeech

    root = tmp_path_factory.mktemp("LibriSpeech")
    make_librispeech(root, {"train-clean-100": 24, "dev-clean": 8}, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_hubert_teacher(tmp_path_factory):
    """Path of a 2-layer random HuBERT saved in the format `hubert_local` loads."""
    from s3prl_star.random_teacher import save_random_teacher

    path = tmp_path_factory.mktemp("teachers") / "tiny_hubert.pt"
    save_random_teacher("hubert", path, layers=2, embed_dim=64, ffn_dim=128, heads=4, seed=0)
    return path
