"""What a report is made of (:class:`ReportData`: every study's rows, the run's metadata, what each study covered)
and its headline numbers (:func:`headline`, :func:`headline_line`: the demo's last line)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from kneuron.studies.metrics import summarize

#: the paper's studies, whose currency the report's warnings check
STUDIES = ("suppress_amplify", "generic", "layers", "discrimination")


@dataclass
class ReportData:
    """What a report is made of: the result rows of each study, the run's metadata and its number of facts."""

    results: Mapping[str, Sequence[dict]]
    meta: Mapping[str, object] = field(default_factory=dict)
    n_facts: int = 0
    title: str = "Knowledge neurons report"
    #: per study, the facts its results covered (``Atlas.coverage()``), and the atlas's done facts now
    #: (``Atlas.done_coverage()``); None when not read from an atlas
    coverage: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    done: Mapping[str, object] | None = None
    source: str = ""
    #: the atlas's vocabulary table (``kneuron study vocabulary``: each knowledge neuron's top tokens)
    vocabulary: Sequence[Mapping[str, object]] = ()

    def rows(self, study: str) -> list[dict]:
        return list(self.results.get(study, ()))

    @classmethod
    def from_atlas(cls, path: str | Path) -> ReportData:
        """Read every study's rows, the metadata, the fact count and what each study covered from the atlas at
        ``path`` (read-only, in one snapshot: the same moment also while a run writes)."""
        from kneuron.store import Atlas
        from kneuron.store.vocabulary import read_vocabulary
        from kneuron.studies.registry import registered_studies

        with Atlas.open(path, read_only=True) as atlas, atlas.snapshot():
            results = {study: atlas.results(study) for study in STUDIES}  # present, also when empty
            for study in [s.name for s in registered_studies()] + atlas.studies():  # every other stored study
                if study not in results and (rows := atlas.results(study)):
                    results[study] = rows
            tokens = read_vocabulary(atlas)
            meta = dict(atlas.meta)
            n_facts = len(atlas.facts())
            coverage, done = atlas.coverage(), atlas.done_coverage()
        return cls(results, meta, n_facts, title=f"Knowledge neurons: {Path(path).name}", coverage=coverage,
                   done=done, source=str(path), vocabulary=tokens)

    def warnings(self) -> list[str]:
        """One line per problem with the studies' currency: results computed on fewer (or other) facts than the
        atlas's done facts now, or results whose covered facts were not recorded."""
        if self.done is None:
            return []
        stale, unknown = [], []
        for study in STUDIES:
            if not self.results.get(study):
                continue
            seen = self.coverage.get(study)
            if seen is None:
                unknown.append(study)
            elif seen.get("digest") != self.done.get("digest"):
                stale.append(f"{study} {seen.get('facts')}")
        again = f"rerun `kneuron study all --run {self.source or 'ATLAS'}`"
        lines = []
        if stale:
            lines.append(f"the atlas has {self.done.get('facts')} done facts, but its studies covered other facts "
                         f"({', '.join(stale)}): their figures are not current; {again}.")
        if unknown:
            lines.append(f"which facts {', '.join(unknown)} covered was not recorded (results written by an older "
                         f"kneuron or without facts=): they may not be current; {again}.")
        return lines


@dataclass(frozen=True)
class Headline:
    """The numbers of the demo's last line: mean relative changes (%) when suppressing / amplifying the knowledge
    neurons, the share (%) of knowledge neurons in the top third of the layers, and the mean per-fact ROC AUC of
    the knowledge neurons and of the activation baseline (own prompts vs other facts' prompts)."""

    facts: int
    suppress: float
    amplify: float
    top_third: float
    auc_kn: float
    auc_activation: float
    auc_kn_signed: float = math.nan


def layer_value(rows: Sequence[dict], variant: str, metric: str, relation: str = "") -> float:
    for r in rows:
        if r["variant"] == variant and r["metric"] == metric and r["relation"] == relation:
            return r["value"]
    return math.nan


def headline(data: ReportData) -> Headline:
    """The headline numbers of ``data`` (NaN where a study is missing)."""
    sa, disc = data.rows("suppress_amplify"), data.rows("discrimination")
    return Headline(
        facts=data.n_facts,
        suppress=summarize(sa, "kn", "suppress").mean * 100,
        amplify=summarize(sa, "kn", "amplify").mean * 100,
        top_third=layer_value(data.rows("layers"), "kn", "top_third") * 100,
        auc_kn=summarize(disc, "kn", "auc").mean,
        auc_activation=summarize(disc, "baseline", "auc").mean,
        auc_kn_signed=summarize(disc, "kn", "auc_signed").mean,
    )


def fmt(value: float, spec: str, suffix: str = "") -> str:
    return f"{value:{spec}}{suffix}" if math.isfinite(value) else "nan"


def headline_line(report_path: str | Path, data: ReportData, signed_auc: bool = False) -> str:
    """``report=PATH facts=N suppress=X% amplify=Y% top_third=Z% auc_kn=A auc_activation=B``.

    ``auc_kn`` is the paper's raw mean activation AUC; with ``signed_auc`` it is the signed one (see
    :mod:`kneuron.studies.discrimination`).
    """
    h = headline(data)
    if signed_auc:
        h = replace(h, auc_kn=h.auc_kn_signed)
    return (f"report={report_path} facts={h.facts} suppress={fmt(h.suppress, '+.2f', '%')} "
            f"amplify={fmt(h.amplify, '+.2f', '%')} top_third={fmt(h.top_third, '.1f', '%')} "
            f"auc_kn={fmt(h.auc_kn, '.3f')} auc_activation={fmt(h.auc_activation, '.3f')}")


# ------------------------------------------------------------------------------------------------ rendering
