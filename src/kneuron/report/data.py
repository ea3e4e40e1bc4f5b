"""What a report is made of (:class:`ReportData`: every study's rows and stored aggregates, the run's metadata,
what each study covered) and its headline numbers (:func:`headline`, :func:`headline_line`: the demo's last
line).

Every interval the report shows is read from the atlas's stored aggregates (:meth:`ReportData.stat`), never
recomputed here; an atlas studied before kneuron stored them shows the bare mean with its n and what to re-run."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from kneuron.studies.intervals import Interval, figure, find, headline_tail, row_mean
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
    #: per study, its stored aggregates (``Atlas.aggregates(study)``: each mean's n, interval and paired p-value);
    #: empty for a study run before kneuron stored them
    aggregates: Mapping[str, Sequence[dict]] = field(default_factory=dict)

    def rows(self, study: str) -> list[dict]:
        return list(self.results.get(study, ()))

    def interval(self, study: str, variant: str, metric: str, relation: str = "") -> Interval:
        """The stored :class:`~kneuron.studies.intervals.Interval` of one mean (n 0 when none was stored)."""
        return find(self.aggregates.get(study, ()), variant, metric, relation)

    def stat(self, study: str, variant: str, metric: str, relation: str = "", *, percent: bool = True,
             digits: int = 1, pooled: float | None = None) -> str:
        """One mean as the report shows it: ``−81.6% [−88.0, −74.1], n = 32, p = 0.0001 vs random`` from the
        stored aggregate (:func:`kneuron.studies.intervals.figure`), or the bare mean with its n and "no interval
        stored" on an older atlas."""
        return figure(self.aggregates.get(study, ()), variant, metric, relation, rows=self.rows(study), study=study,
                      percent=percent, digits=digits, pooled=pooled)

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
            aggregates = {study: atlas.aggregates(study) for study in results}
            meta = dict(atlas.meta)
            n_facts = len(atlas.facts())
            coverage, done = atlas.coverage(), atlas.done_coverage()
        return cls(results, meta, n_facts, title=f"Knowledge neurons: {Path(path).name}", coverage=coverage,
                   done=done, source=str(path), vocabulary=tokens, aggregates=aggregates)

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
    #: the stored intervals of those figures, by the headline's key (n 0 where none was stored)
    intervals: Mapping[str, Interval] = field(default_factory=dict)
    #: the number of facts each figure is a mean over, by key (from the rows: also without stored intervals)
    counts: Mapping[str, int] = field(default_factory=dict)


#: the headline's figures: key -> (study, variant, metric)
HEADLINE_FIGURES = {"suppress": ("suppress_amplify", "kn", "suppress"),
                    "amplify": ("suppress_amplify", "kn", "amplify"), "top_third": ("layers", "kn", "top_third"),
                    "auc_kn": ("discrimination", "kn", "auc"),
                    "auc_activation": ("discrimination", "baseline", "auc"),
                    "auc_kn_signed": ("discrimination", "kn", "auc_signed")}


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
        intervals={key: data.interval(*where) for key, where in HEADLINE_FIGURES.items()},
        counts={key: row_mean(data.rows(study), variant, metric)[1]
                for key, (study, variant, metric) in HEADLINE_FIGURES.items()},
    )


def fmt(value: float, spec: str, suffix: str = "") -> str:
    return f"{value:{spec}}{suffix}" if math.isfinite(value) else "nan"


def headline_line(report_path: str | Path, data: ReportData, signed_auc: bool = False) -> str:
    r"""``report=PATH facts=N suppress=X% [lo, hi] n=K amplify=Y% [lo, hi] n=K top_third=Z% [lo, hi] n=K
    auc_kn=A [lo, hi] n=K auc_activation=B [lo, hi] n=K``.

    Each ``key=value`` token is as before (a regex like ``suppress=(\S+)%`` still reads it); after it come the
    stored 95% interval (percent points for the percentages) and the number of facts, or only ``n=K`` when no
    interval was stored (an atlas studied by an older kneuron), or nothing when the figure is ``nan``.
    ``auc_kn`` is the paper's raw mean activation AUC; with ``signed_auc`` it is the signed one (see
    :mod:`kneuron.studies.discrimination`).
    """
    h = headline(data)
    auc_key = "auc_kn_signed" if signed_auc else "auc_kn"
    if signed_auc:
        h = replace(h, auc_kn=h.auc_kn_signed)

    def tail(key: str, value: float, percent: bool) -> str:
        if not math.isfinite(value):
            return ""
        return headline_tail(h.intervals.get(key, Interval(math.nan, math.nan, math.nan, 0, "none")),
                             percent=percent, n=h.counts.get(key, 0))

    return (f"report={report_path} facts={h.facts} suppress={fmt(h.suppress, '+.2f', '%')}"
            f"{tail('suppress', h.suppress, True)} amplify={fmt(h.amplify, '+.2f', '%')}"
            f"{tail('amplify', h.amplify, True)} top_third={fmt(h.top_third, '.1f', '%')}"
            f"{tail('top_third', h.top_third, True)} auc_kn={fmt(h.auc_kn, '.3f')}{tail(auc_key, h.auc_kn, False)} "
            f"auc_activation={fmt(h.auc_activation, '.3f')}{tail('auc_activation', h.auc_activation, False)}")


# ------------------------------------------------------------------------------------------------ rendering
