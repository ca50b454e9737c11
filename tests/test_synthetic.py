"""The espeak-ng corpus: LibriSpeech layout, 16 kHz mono FLAC, matching transcripts, determinism."""
import re
import shutil

import pytest
import soundfile as sf

from helpers import corpus_files
from s3prl_star.mini_superb.synthetic import MissingToolError, make_librispeech, plan_corpus

UTTERANCE = re.compile(r"(\d+)-(\d+)-(\d{4})")


def test_layout_audio_and_transcripts(mini_librispeech):
    speakers_by_split = {}
    for split, size in (("train-clean-100", 24), ("dev-clean", 8)):
        audio = sorted((mini_librispeech / split).rglob("*.flac"))
        assert len(audio) == size
        speakers_by_split[split] = {path.relative_to(mini_librispeech / split).parts[0] for path in audio}
        for path in audio:
            speaker, chapter, name = path.relative_to(mini_librispeech / split).parts
            match = UTTERANCE.fullmatch(path.stem)
            assert match and match.group(1, 2) == (speaker, chapter), path
            info = sf.info(path)
            assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
            assert 1.0 <= info.duration <= 4.5, (path, info.duration)
        for chapter_dir in {path.parent for path in audio}:
            speaker, chapter = chapter_dir.parent.name, chapter_dir.name
            lines = (chapter_dir / f"{speaker}-{chapter}.trans.txt").read_text().splitlines()
            assert lines == sorted(lines)
            ids = [line.split(" ", 1)[0] for line in lines]
            assert ids == sorted(path.stem for path in chapter_dir.glob("*.flac"))
            for line in lines:
                assert re.fullmatch(r"\S+ [A-Z']+( [A-Z']+)+", line), line
    assert len(speakers_by_split["train-clean-100"]) == 3 == len(speakers_by_split["dev-clean"])
    assert not speakers_by_split["train-clean-100"] & speakers_by_split["dev-clean"]


def test_speakers_get_different_voices(tmp_path):
    plan = plan_corpus(tmp_path, {"train-clean-100": 12, "dev-clean": 6}, seed=0, speakers_per_split=3)
    voice_of = {utterance.utterance_id.rsplit("-", 1)[0]: utterance.voice for utterance in plan}
    assert len(voice_of) == 6 and len(set(voice_of.values())) == 6


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    sizes = {"dev-clean": 4}
    first = corpus_files(make_librispeech(tmp_path / "a", sizes, seed=7, speakers_per_split=2))
    again = corpus_files(make_librispeech(tmp_path / "b", sizes, seed=7, speakers_per_split=2))
    other = corpus_files(make_librispeech(tmp_path / "c", sizes, seed=8, speakers_per_split=2))
    assert len(first) == 4 + 2  # 4 utterances, 2 chapters' transcripts
    assert first == again
    assert first.keys() == other.keys() and first != other


def test_refuses_to_write_into_an_existing_split(tmp_path):
    (tmp_path / "dev-clean").mkdir()
    with pytest.raises(FileExistsError, match="dev-clean"):
        make_librispeech(tmp_path, {"dev-clean": 2})


@pytest.mark.parametrize("present, missing", [((), "espeak-ng"), (("espeak-ng",), "sox")])
def test_missing_tool_names_the_apt_package(tmp_path, monkeypatch, present, missing):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in present:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(MissingToolError, match=f"apt-get install {missing}"):
        make_librispeech(tmp_path / "corpus", {"dev-clean": 2})
    assert not (tmp_path / "corpus").exists()
