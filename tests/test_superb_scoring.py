"""The SUPERB scorers written here, on cases computed by hand: QbE MTWV (QUESST 2014), SD DER (dscore's
defaults: collar 0, overlaps scored) and the ASV EER line.

The QUESST ground-truth files follow the layout `s3prl_star.superb.scorers.qbe` documents; the score files and
predictions follow what s3prl's quesst14_dtw and diarization experts write (their end-to-end runs are in
test_superb_tasks.py). The agreement with the official QUESST kit runs where the kit is installed.
"""
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

from helpers import frames_of, write_quesst_ground_truth, write_run
from s3prl_star.superb.scorers import asv, diarization, qbe
from s3prl_star.superb.scorers.diarization import Turn

# --- QbE: QUESST 2014 ground truth and s3prl's score file -------------------------------------------


def write_stdlist(path: Path, scores: dict):
    """`scores` {(query, document): score} as s3prl's quesst14_dtw expert writes benchmark.stdlist.xml
    (one detected_termlist per query, one term per document; decision YES above 2, its threshold)."""
    root = ElementTree.Element("stdlist", termlist_filename="benchmark.stdlist.xml", indexing_time="1.00",
                               language="english", index_size="1", system_id="benchmark")
    termlists = {}
    for (query, document), score in scores.items():
        if query not in termlists:
            termlists[query] = ElementTree.SubElement(root, "detected_termlist", termid=query,
                                                      term_search_time="1.0", oov_term_count="1")
        ElementTree.SubElement(termlists[query], "term", file=document, channel="1", tbeg="0.000", dur="0.00",
                               score=f"{score:.4f}", decision="YES" if score > 2.0 else "NO")
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(root).write(path, encoding="UTF-8")


DOCUMENTS = [f"quesst14_{i:05d}" for i in range(1, 5)]
QUERIES = ["quesst14_dev_0001", "quesst14_dev_0002"]
OCCURRENCES = {"quesst14_dev_0001": ["quesst14_00001"], "quesst14_dev_0002": ["quesst14_00002", "quesst14_00003"]}


def truth(documents=DOCUMENTS, queries=QUERIES, occurrences=OCCURRENCES) -> qbe.GroundTruth:
    return qbe.GroundTruth(frozenset(documents), frozenset(queries),
                           {query: frozenset(found) for query, found in occurrences.items()})


def scores_where(target_score: float, other_score: float, occurrences=OCCURRENCES, queries=QUERIES) -> dict:
    return {(q, d): target_score if d in occurrences.get(q, ()) else other_score for q in queries for d in DOCUMENTS}


def test_perfect_detector_has_mtwv_one():
    assert qbe.maximum_term_weighted_value(scores_where(1.0, 0.0), truth()) == pytest.approx(1.0)


@pytest.mark.parametrize("target_score, other_score", [(0.5, 0.5), (0.0, 1.0)])
def test_uninformative_or_inverted_detector_has_mtwv_zero(target_score, other_score):
    """Equal scores: detecting all trials costs BETA per query (TWV = 1 - 12.49), detecting none gives 0."""
    assert qbe.maximum_term_weighted_value(scores_where(target_score, other_score), truth()) == 0.0


def test_one_missed_occurrence():
    """Query 2's second occurrence scored as a non-target: at the best threshold query 1 is perfect and query 2
    misses 1 of 2, so MTWV = 1 - (0 + 1/2) / 2 = 0.75."""
    scores = scores_where(1.0, 0.0)
    scores[("quesst14_dev_0002", "quesst14_00003")] = 0.0
    assert qbe.maximum_term_weighted_value(scores, truth()) == pytest.approx(0.75)


def test_one_false_alarm_costs_beta_over_the_non_targets():
    """One query, 1 target among 101 documents, one non-target tied with it: TWV = 1 - BETA * 1/100, with
    BETA = (C_fa / C_miss)(1 / P_target - 1) = (1 / 100)(1 / 0.0008 - 1) = 12.49 (QUESST 2014)."""
    documents = [f"quesst14_{i:05d}" for i in range(101)]
    ground_truth = qbe.GroundTruth(frozenset(documents), frozenset(["q"]), {"q": frozenset([documents[0]])})
    scores = {("q", d): 0.0 for d in documents} | {("q", documents[0]): 1.0, ("q", documents[1]): 1.0}
    assert qbe.BETA == pytest.approx(12.49)
    assert qbe.maximum_term_weighted_value(scores, ground_truth) == pytest.approx(1 - 12.49 / 100)


def test_run_scores_unscored_queries_as_missed_and_skips_queries_without_occurrences(tmp_path):
    """As with s3prl's English-only score files: query 2 is in the ground truth but not scored (default
    score -10, all missed), query 3 has no occurrence (not averaged), so a perfect query 1 gives 0.5."""
    write_quesst_ground_truth(tmp_path / "quesst14Database" / "scoring" / "groundtruth_quesst14_eval", "eval",
                              DOCUMENTS, [*QUERIES, "quesst14_dev_0003"], OCCURRENCES)
    write_stdlist(tmp_path / "exp" / "benchmark.stdlist.xml",
                  {key: value for key, value in scores_where(3.0, -1.0).items() if key[0] == "quesst14_dev_0001"})
    assert qbe.mtwv_of_run(tmp_path / "exp", tmp_path / "quesst14Database", "test") == pytest.approx(0.5)


def test_unscored_trials_sit_at_the_default_score():
    """The target scored -12 and a non-target -13, the two other documents unscored (-10): any threshold that
    detects the target also detects the two unscored non-targets (TWV = 1 - 12.49 * 2/3 < 0), so MTWV = 0."""
    ground_truth = qbe.GroundTruth(frozenset(DOCUMENTS), frozenset(["q"]), {"q": frozenset([DOCUMENTS[0]])})
    scores = {("q", DOCUMENTS[0]): -12.0, ("q", DOCUMENTS[1]): -13.0}
    assert qbe.maximum_term_weighted_value(scores, ground_truth) == 0.0


def test_run_rejects_trials_outside_the_ground_truth(tmp_path):
    write_quesst_ground_truth(tmp_path / "db" / "scoring" / "groundtruth_quesst14_dev", "dev", DOCUMENTS, QUERIES, OCCURRENCES)
    write_stdlist(tmp_path / "exp" / "benchmark.stdlist.xml", {("quesst14_dev_0001", "quesst14_09999"): 1.0})
    with pytest.raises(ValueError, match="quesst14_09999"):
        qbe.mtwv_of_run(tmp_path / "exp", tmp_path / "db", "dev")
    with pytest.raises(ValueError, match="expected one of"):
        qbe.mtwv_of_run(tmp_path / "exp", tmp_path / "db", "eval")
    with pytest.raises(FileNotFoundError, match=r"groundtruth_quesst14_eval: expected exactly one \*\.ecf\.xml"):
        qbe.mtwv_of_run(tmp_path / "exp", tmp_path / "db", "test")
    with (tmp_path / "db" / "scoring" / "groundtruth_quesst14_dev" / "quesst14_dev.rttm").open("a") as rttm:
        rttm.write("LEXEME quesst14_00001 1 0.50 0.40 quesst14_dev_0042 lex <NA> <NA>\n")
    with pytest.raises(ValueError, match=r"quesst14_dev\.rttm:4: document 'quesst14_00001' or query 'quesst14_dev_0042'"):
        qbe.mtwv_of_run(tmp_path / "exp", tmp_path / "db", "dev")


def test_a_trial_scored_twice_is_an_error(tmp_path):
    term = '<term file="quesst14_00001" channel="1" tbeg="0.000" dur="0.00" score="1.0000" decision="NO"/>'
    (tmp_path / "benchmark.stdlist.xml").write_text(
        f'<stdlist><detected_termlist termid="quesst14_dev_0001">{term}{term}</detected_termlist></stdlist>')
    with pytest.raises(ValueError, match="scores document 'quesst14_00001' twice"):
        qbe.read_scores(tmp_path / "benchmark.stdlist.xml")


def test_best_layer_on_dev_takes_the_highest_dev_mtwv_and_the_lowest_layer_on_ties(tmp_path):
    write_quesst_ground_truth(tmp_path / "db" / "scoring" / "groundtruth_quesst14_dev", "dev", DOCUMENTS, QUERIES, OCCURRENCES)
    one_miss = scores_where(1.0, 0.0) | {("quesst14_dev_0002", "quesst14_00003"): 0.0}
    runs = {3: one_miss, 5: scores_where(1.0, 0.0), 7: scores_where(1.0, 0.0), 9: scores_where(0.0, 0.0)}
    for layer, scores in runs.items():
        write_stdlist(tmp_path / f"layer{layer}" / "benchmark.stdlist.xml", scores)
    dev_expdirs = {layer: tmp_path / f"layer{layer}" for layer in runs}
    assert qbe.best_layer_on_dev(dev_expdirs, tmp_path / "db") == (5, pytest.approx(1.0))


def quesst_kit() -> Path | None:
    """The QUESST 2014 scoring folder named by $QUESST14_SCORING_DIR, when it has the kit and java runs."""
    folder = os.environ.get("QUESST14_SCORING_DIR")
    if folder and (Path(folder) / "score-TWV-Cnxe.sh").is_file() and shutil.which("java"):
        return Path(folder)
    return None


@pytest.mark.skipif(quesst_kit() is None, reason="the QUESST 2014 kit ships only inside the corpus: set "
                    "QUESST14_SCORING_DIR to quesst14Database/scoring (needs java) to compare with it")
def test_mtwv_agrees_with_the_official_kit(tmp_path):
    """A generated case (40 documents, 4 queries, random scores with 2 queries left unscored) scored by the
    kit as SUPERB runs it (`score-TWV-Cnxe.sh EXPDIR GROUNDTRUTH -10`) and here."""
    rng = np.random.default_rng(0)
    documents = [f"quesst14_{i:05d}" for i in range(1, 41)]
    queries = [f"quesst14_dev_{i:04d}" for i in range(1, 5)]
    occurrences = {query: list(rng.choice(documents, size=index + 1, replace=False)) for index, query in enumerate(queries)}
    write_quesst_ground_truth(tmp_path / "groundtruth", "dev", documents, queries, occurrences)
    scores = {(q, d): float(rng.normal(2.0 if d in occurrences[q] else 0.0)) for q in queries[:2] for d in documents}
    write_stdlist(tmp_path / "exp" / "benchmark.stdlist.xml", scores)
    kit = quesst_kit()
    result = subprocess.run(["bash", "score-TWV-Cnxe.sh", str(tmp_path / "exp"), str(tmp_path / "groundtruth"), "-10"],
                            cwd=kit, capture_output=True, text=True, timeout=300)
    output = result.stdout + ((tmp_path / "exp" / "score.out").read_text() if (tmp_path / "exp" / "score.out").exists() else "")
    kit_mtwv = float(re.search(r"maxTWV: *([-0-9.]+)", output).group(1))
    assert qbe.maximum_term_weighted_value(qbe.read_scores(tmp_path / "exp" / "benchmark.stdlist.xml"),
                                           qbe.read_ground_truth(tmp_path / "groundtruth")) == pytest.approx(kit_mtwv, abs=1e-4)


# --- SD: DER with collar 0, overlap scored ---------------------------------------------------------

# Two speakers, 5 s of overlap: 20 s of reference speaker time.
REFERENCE = [Turn("mix", "A", 0.0, 10.0), Turn("mix", "B", 5.0, 15.0)]


def test_perfect_diarization_has_der_zero_whatever_the_speaker_names():
    system = [Turn("mix", "spk1", 0.0, 10.0), Turn("mix", "spk0", 5.0, 15.0)]
    assert diarization.diarization_error_rate(REFERENCE, system) == 0.0


def test_no_system_speech_has_der_hundred():
    assert diarization.diarization_error_rate(REFERENCE, []) == 100.0


def test_one_speaker_everywhere_misses_the_overlap_and_confuses_the_rest():
    """x over 0-15 s maps to A (tied co-activity, 10 s each): 5-10 s misses B (5 s), 10-15 s is B labelled x
    (5 s confusion): DER = (5 + 5) / 20 = 50 %."""
    error = diarization.recording_error(REFERENCE, [Turn("mix", "x", 0.0, 15.0)])
    assert (error.missed, error.false_alarm, error.confusion, error.scored) == (5.0, 0.0, 5.0, 20.0)
    assert error.rate == 50.0


def test_false_alarm_and_confusion_are_counted_and_summed_over_recordings():
    """mix: s1 = A exactly; s2 speaks 5-12 s (B right for 7 s), then s1 again 12-15 s (3 s confusion: B is
    mapped to s2) and s2 15-17 s with nobody talking (2 s false alarm). Plus a second recording entirely
    missed (4 s). DER = (0 + 2 + 3 + 4) / (20 + 4) = 37.5 %."""
    system = [Turn("mix", "s1", 0.0, 10.0), Turn("mix", "s2", 5.0, 12.0), Turn("mix", "s1", 12.0, 15.0),
              Turn("mix", "s2", 15.0, 17.0)]
    reference = REFERENCE + [Turn("other", "C", 1.0, 5.0)]
    assert diarization.diarization_error_rate(reference, system) == pytest.approx(37.5)


def test_rttm_round_trip_and_a_clear_error_on_a_bad_line(tmp_path):
    diarization.write_rttm(tmp_path / "a.rttm", REFERENCE)
    assert diarization.read_rttm(tmp_path / "a.rttm") == REFERENCE
    (tmp_path / "bad.rttm").write_text("SPEAKER mix 1 zero 1.0 <NA> <NA> A <NA>\n")
    with pytest.raises(ValueError, match=r"bad\.rttm:1: expected 'SPEAKER REC"):
        diarization.read_rttm(tmp_path / "bad.rttm")


def reference_dir(path: Path, turns) -> Path:
    path.mkdir(parents=True)
    diarization.write_rttm(path / "rttm", turns)
    return path


def test_der_of_run_turns_predictions_into_rttm_at_the_stored_frame_shift(tmp_path):
    """Predictions equal to the reference frames score 0, read at the expdir's frame shift. At 160 samples the
    same frames span 0-5 s and 2.5-7.5 s: 2.5 s false alarm (2.5-5 s) and 2.5 + 2 * 2.5 + 5 = 12.5 s missed,
    DER = 15 / 20 = 75 %."""
    write_run(tmp_path / "exp", {"mix": frames_of(REFERENCE, 800)})
    reference = reference_dir(tmp_path / "test", REFERENCE)
    assert diarization.der_of_run(tmp_path / "exp", reference) == 0.0
    assert sorted(path.name for path in (tmp_path / "exp" / "scoring").glob("hyp_*.rttm")) == sorted(
        f"hyp_{threshold}_{median}.rttm" for threshold in (0.3, 0.4, 0.5, 0.6, 0.7) for median in (1, 11))
    write_run(tmp_path / "exp160", {"mix": frames_of(REFERENCE, 800)}, frame_shift=160)
    assert diarization.der_of_run(tmp_path / "exp160", reference) == pytest.approx(75.0)


def test_der_of_run_reports_the_best_setting(tmp_path):
    """A one-frame spike of speaker B at 0.55 and a 0.45 dip of A: the threshold-0.5 settings see a false alarm
    and a miss, median 11 removes both, so the lowest DER over the ten settings is 0."""
    probabilities = frames_of(REFERENCE, 800)
    probabilities[100, 1], probabilities[300, 0] = 0.55, 0.45
    write_run(tmp_path / "exp", {"mix": probabilities})
    assert diarization.der_of_run(tmp_path / "exp", reference_dir(tmp_path / "test", REFERENCE)) == 0.0
    hypothesis = diarization.read_rttm(tmp_path / "exp" / "scoring" / "hyp_0.5_1.rttm")
    assert diarization.diarization_error_rate(REFERENCE, hypothesis) == pytest.approx(100 * 0.04 / 20)


def test_der_of_run_names_what_is_missing(tmp_path):
    write_run(tmp_path / "exp", {"mix": frames_of(REFERENCE, 800)})
    (tmp_path / "exp" / "frame_shift").unlink()
    with pytest.raises(ValueError, match=r"frame_shift: expected the label frame shift"):
        diarization.der_of_run(tmp_path / "exp", reference_dir(tmp_path / "test", REFERENCE))
    (tmp_path / "exp" / "frame_shift").write_text("320\n")
    with pytest.raises(ValueError, match=r"no prediction for \['other'\]"):
        diarization.der_of_run(tmp_path / "exp", reference_dir(tmp_path / "test2", REFERENCE + [Turn("other", "C", 0, 1)]))


# --- ASV: the EER s3prl prints -----------------------------------------------------------------------


def test_eer_of_output_reads_the_test_eer_line():
    output = "[Runner] - Loading ...\nsv-voxceleb1/test-EER: 0.0512\nsaved\n"
    assert asv.eer_of_output(output) == 0.0512
    with pytest.raises(ValueError, match="expected one 'sv-voxceleb1/test-EER: v' line"):
        asv.eer_of_output("sv-voxceleb1/dev-EER: 0.1\n")
    with pytest.raises(ValueError, match="found 2"):
        asv.eer_of_output(output + output)


def test_unscored_trials_score_minus_ten_between_two_scored_ones():
    """The target scored -9, a non-target -11, two non-targets unscored: at the kit's default of -10 a threshold
    between -10 and -9 detects the target alone (MTWV 1); a default above -9 would detect the unscored ones with it."""
    ground_truth = qbe.GroundTruth(frozenset(DOCUMENTS), frozenset(["q"]), {"q": frozenset([DOCUMENTS[0]])})
    scores = {("q", DOCUMENTS[0]): -9.0, ("q", DOCUMENTS[1]): -11.0}
    assert qbe.DEFAULT_SCORE == -10.0
    assert qbe.maximum_term_weighted_value(scores, ground_truth) == pytest.approx(1.0)


def write_eer_logs(expdir: Path, eers: dict[int, float]) -> None:
    """`EXPDIR/states-STEP/log.txt` as the driver leaves each checkpoint's test evaluation (a fraction)."""
    for step, eer in eers.items():
        (expdir / f"states-{step}").mkdir(parents=True)
        (expdir / f"states-{step}" / "log.txt").write_text(f"[Runner] - ...\nsv-voxceleb1/test-EER: {eer}\n")


def test_asv_takes_the_lowest_eer_over_the_checkpoints(tmp_path):
    write_eer_logs(tmp_path, {2: 0.3, 4: 0.1, 6: 0.2})
    assert asv.lowest_eer(tmp_path) == (pytest.approx(10.0), "states-4")


def test_asv_ties_go_to_the_earlier_checkpoint_in_step_order(tmp_path):
    """states-10 sorts before states-2 as text: the tie rule follows the steps."""
    write_eer_logs(tmp_path, {10: 0.1, 2: 0.1, 30: 0.2})
    assert asv.lowest_eer(tmp_path) == (pytest.approx(10.0), "states-2")
