"""The star_hubert upstreams on s3prl.hub: registration, s3prl's own S3PRLUpstream, hidden-state layout."""
import pytest
import torch

@pytest.fixture(scope="module")
def hub():
    import s3prl_star

    s3prl_star.register()
    import s3prl.hub

    return s3prl.hub


def test_register_is_idempotent_and_lists_the_names(hub):
    import s3prl_star
    import s3prl_star.integration.hub as star_hub

    before = {name: getattr(hub, name) for name in star_hub.ENTRY_NAMES}
    s3prl_star.register()
    for name in star_hub.ENTRY_NAMES:
        assert getattr(hub, name) is before[name] is getattr(star_hub, name)
    assert set(star_hub.ENTRY_NAMES) <= set(hub.options())


def test_s3prl_upstream_forward_shapes(hub, tiny_student_checkpoint):
    from s3prl.nn import S3PRLUpstream

    upstream = S3PRLUpstream("star_hubert_local", str(tiny_student_checkpoint)).eval()
    lengths = torch.tensor([16000, 11200])
    waveforms = torch.randn(2, 16000)
    with torch.no_grad():
        all_hs, all_lens = upstream(waveforms, lengths)
    assert len(all_hs) == 12
    for hs, hs_len in zip(all_hs, all_lens):
        assert hs.shape == (2, 50, 32)  # 16000 / 320 frames, embed dim 32
        assert hs_len.tolist() == [50, 35]


def test_hidden_states_are_the_layer_outputs_and_the_option_adds_the_feature(hub, tiny_student):
    path, model = tiny_student
    wavs = [torch.randn(16000), torch.randn(9000)]
    with torch.no_grad():
        reference = model.forward_list(wavs).hidden_states
        layers = hub.star_hubert(ckpt=str(path), model_config=None, refresh=False)(wavs)["hidden_states"]
        with_feature = hub.star_hubert_with_feature(ckpt=str(path), model_config=None, refresh=False)(wavs)["hidden_states"]
    assert len(layers) == 12 and len(with_feature) == 13
    for index, hidden in enumerate(layers):
        torch.testing.assert_close(hidden, reference[index + 1])
    torch.testing.assert_close(with_feature[0], reference[0])
    assert hub.star_hubert_local(str(path)).get_downsample_rates("hidden_states") == 320


def test_url_entry_downloads_into_s3prls_cache(hub, tiny_student_checkpoint, tmp_path, monkeypatch):
    import s3prl.util.download

    monkeypatch.setattr(s3prl.util.download, "_download_dir", tmp_path / "cache")
    path = tiny_student_checkpoint
    upstream = hub.star_hubert_url(ckpt=path.resolve().as_uri(), refresh=False)
    assert len(list((tmp_path / "cache").glob(f"*.{path.name}"))) == 1
    assert len(upstream([torch.randn(4000)])["hidden_states"]) == 12


def test_missing_checkpoint_is_named(hub, tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        hub.star_hubert(ckpt=str(missing))


def test_star_hubert_resolves_in_a_fresh_process_of_the_readme_environment(tmp_path):
    """`make`'s editable install carries the start-up hook too: no import of s3prl_star in user code."""
    import subprocess
    import sys

    from helpers import user_environment

    probe = "from s3prl.nn import S3PRLUpstream; print('star_hubert' in S3PRLUpstream.available_names())"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=user_environment(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "True", result.stdout + result.stderr[-2000:]
