"""SUPERB QbE: MTWV of s3prl's `quesst14_dtw` score files against the QUESST 2014 ground truth.

s3prl's expert scores every English query against every English document and writes
`EXPDIR/benchmark.stdlist.xml` (NIST STD 2006 stdlist: `detected_termlist termid=QUERY` elements
holding `term file=DOCUMENT score=S`). SUPERB scores it with the corpus' own kit,
`scoring/score-TWV-Cnxe.sh EXPDIR groundtruth_quesst14_{dev,eval} -10`, which this module
re-implements: the kit is a Java tool inside the corpus, not installable from a package index.

The definition (QUESST 2014 evaluation plan: X. Anguera, L. J. Rodriguez-Fuentes, I. Szoke,
A. Buzo, F. Metze, "Query by Example Search on Speech at Mediaeval 2014", MediaEval 2014
Workshop, CEUR-WS Vol-1263): every (query, document) pair of the ground truth is a
trial; a trial is a target when the ground-truth RTTM has the query in the document. At a
threshold t (detect when score >= t),

    TWV(t) = 1 - mean over queries q of [P_miss(q, t) + BETA * P_fa(q, t)]
    P_miss(q, t) = 1 - hits(q, t) / targets(q),  P_fa(q, t) = false_alarms(q, t) / (documents - targets(q))
    BETA = (C_fa / C_miss) * (1 / P_target - 1)

averaged over the queries with at least one target (the kit reports removing the others as
"unseen models"), and
MTWV = max over t of TWV(t); a threshold above every score (no detections) gives 0, so MTWV >= 0.
Trials the score file lacks get the default score -10, as SUPERB's `-10` argument gives the kit:
s3prl scores only English trials, so the other languages' queries count as all missed.

Ground truth (`dataset_root/scoring/groundtruth_quesst14_{dev,eval}/`): one `*.ecf.xml` (the
documents: `excerpt audio_filename=...`), one `*.tlist.xml` (the queries: `term termid=...`) and
one `*.rttm` (occurrences: `LEXEME DOCUMENT CHANNEL TBEG DUR QUERY ...`, the layout s3prl's own
quesst14_embedding reader parses). Document names are compared without folder and `.wav`.
"""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

# The TWV's prior and costs of the QUESST 2014 evaluation plan (Anguera et al. 2014, cited above). The QUESST
# kit's README (2015 edition) runs its scoring tool with the matching effective prior
# P_target*C_miss / (P_target*C_miss + (1 - P_target)*C_fa) = 0.0741289.
P_TARGET = 0.0008
COST_MISS = 100.0
COST_FALSE_ALARM = 1.0
BETA = COST_FALSE_ALARM / COST_MISS * (1.0 / P_TARGET - 1.0)  # 12.49
# The score of trials missing from the score file: SUPERB runs the kit with `-10`.
DEFAULT_SCORE = -10.0
# s3prl's `-t` split -> the ground-truth folder's suffix (s3prl's `test` reads the `eval` queries).
GROUND_TRUTH_SPLITS = {"dev": "dev", "test": "eval"}
SCORE_FILE = "benchmark.stdlist.xml"


@dataclass(frozen=True)
class GroundTruth:
    """The trials of one QUESST split: every document, and the documents holding each query."""

    documents: frozenset[str]
    queries: frozenset[str]
    occurrences: Mapping[str, frozenset[str]]  # query -> documents it occurs in (queries with none are absent)


def document_id(name: str) -> str:
    """A document's id without folder and `.wav` (the ECF may give paths; s3prl writes the bare stem)."""
    return PurePosixPath(name).name.removesuffix(".wav")


def _only_file(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise FileNotFoundError(f"{directory}: expected exactly one {pattern} (QUESST 2014 ground truth), found {len(found)}")
    return found[0]


def _attributes(path: Path, tag: str, attribute: str) -> list[str]:
    """The `attribute` of every `tag` element of the XML file `path`; an element lacking it is an error."""
    values = []
    for element in ElementTree.parse(path).getroot().iter(tag):
        if attribute not in element.attrib:
            raise ValueError(f"{path}: a <{tag}> element has no {attribute!r} attribute")
        values.append(element.attrib[attribute])
    if not values:
        raise ValueError(f"{path}: no <{tag} {attribute}=...> element")
    return values


def read_ground_truth(directory: str | Path) -> GroundTruth:
    """Read a QUESST 2014 ground-truth folder (`*.ecf.xml`, `*.tlist.xml`, `*.rttm`, one each)."""
    directory = Path(directory)
    documents = frozenset(document_id(name) for name in _attributes(_only_file(directory, "*.ecf.xml"), "excerpt", "audio_filename"))
    queries = frozenset(_attributes(_only_file(directory, "*.tlist.xml"), "term", "termid"))
    rttm = _only_file(directory, "*.rttm")
    occurrences: dict[str, set[str]] = {}
    for number, line in enumerate(rttm.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] != "LEXEME":
            continue
        if len(fields) < 6:
            raise ValueError(f"{rttm}:{number}: expected 'LEXEME DOCUMENT CHANNEL TBEG DUR QUERY ...', found {line!r}")
        document, query = document_id(fields[1]), fields[5]
        if document not in documents or query not in queries:
            raise ValueError(f"{rttm}:{number}: document {document!r} or query {query!r} is not in the ECF / term list")
        occurrences.setdefault(query, set()).add(document)
    return GroundTruth(documents, queries, {query: frozenset(found) for query, found in occurrences.items()})


def read_scores(path: str | Path) -> dict[tuple[str, str], float]:
    """{(query, document): score} from an STD stdlist file such as s3prl's `benchmark.stdlist.xml`."""
    path = Path(path)
    scores: dict[tuple[str, str], float] = {}
    for termlist in ElementTree.parse(path).getroot().iter("detected_termlist"):
        query = termlist.attrib["termid"]
        for term in termlist.iter("term"):
            trial = (query, document_id(term.attrib["file"]))
            if trial in scores:
                raise ValueError(f"{path}: query {query!r} scores document {trial[1]!r} twice")
            scores[trial] = float(term.attrib["score"])
    return scores


def maximum_term_weighted_value(scores: Mapping[tuple[str, str], float], truth: GroundTruth) -> float:
    """MTWV (0..1) of `scores` {(query, document): score} on `truth`; missing trials score DEFAULT_SCORE.

    TWV(t) is a sum over the detected trials of +1 / (Q * targets(q)) per hit and
    -BETA / (Q * (documents - targets(q))) per false alarm, so it is a running sum over the trials
    in decreasing score order, evaluated after each group of equal scores. The trials a query's
    scores lack enter as one group at DEFAULT_SCORE.
    """
    if not truth.occurrences:
        raise ValueError("the ground truth has no query with an occurrence: TWV is undefined")
    by_query: dict[str, dict[str, float]] = {}
    for (query, document), score in scores.items():
        if query not in truth.queries or document not in truth.documents:
            raise ValueError(f"scored trial ({query!r}, {document!r}) is not in the ground truth's term list / ECF")
        by_query.setdefault(query, {})[document] = score
    trial_scores, weights = [], []
    for query, targets in truth.occurrences.items():
        hit = 1.0 / (len(truth.occurrences) * len(targets))
        non_targets = len(truth.documents) - len(targets)
        false_alarm = -BETA / (len(truth.occurrences) * non_targets) if non_targets else 0.0  # P_fa = 0 / 0: none
        scored = by_query.get(query, {})
        for document, score in scored.items():
            trial_scores.append(score)
            weights.append(hit if document in targets else false_alarm)
        unscored_targets = len(targets - scored.keys())
        unscored_others = len(truth.documents) - len(scored) - unscored_targets
        trial_scores.append(DEFAULT_SCORE)
        weights.append(unscored_targets * hit + unscored_others * false_alarm)
    distinct, group = np.unique(-np.asarray(trial_scores), return_inverse=True)  # decreasing scores
    values = np.cumsum(np.bincount(group, weights=weights, minlength=len(distinct)))
    return float(max(0.0, values.max()))


def mtwv_of_run(expdir: str | Path, dataset_root: str | Path, split: str) -> float:
    """MTWV (0..1) of one `s3prl-star downstream -m evaluate -d quesst14_dtw -t SPLIT -p EXPDIR` run.

    `dataset_root` is the quesst14Database folder, `split` the run's `-t` (`dev` or `test`).
    """
    if split not in GROUND_TRUTH_SPLITS:
        raise ValueError(f"split {split!r}: expected one of {sorted(GROUND_TRUTH_SPLITS)} (the run's -t)")
    score_file = Path(expdir) / SCORE_FILE
    if not score_file.is_file():
        raise FileNotFoundError(f"{score_file}: no score file; run -m evaluate -d quesst14_dtw -p {expdir} first")
    truth = read_ground_truth(Path(dataset_root) / "scoring" / f"groundtruth_quesst14_{GROUND_TRUTH_SPLITS[split]}")
    return maximum_term_weighted_value(read_scores(score_file), truth)


def best_layer_on_dev(dev_expdirs: Mapping[int, str | Path], dataset_root: str | Path) -> tuple[int, float]:
    """(layer, dev MTWV) of the layer whose dev run scores best, as SUPERB chooses QbE's layer.

    `dev_expdirs` maps each `-l` layer to the expdir of its `-t dev` run; ties go to the lowest layer.
    The SUPERB figure is then `mtwv_of_run` of that layer's `-t test` run.
    """
    if not dev_expdirs:
        raise ValueError("best_layer_on_dev: no dev runs given")
    values = {layer: mtwv_of_run(expdir, dataset_root, "dev") for layer, expdir in sorted(dev_expdirs.items())}
    best = max(values, key=lambda layer: (values[layer], -layer))
    return best, values[best]
