"""The report: matplotlib figures (Agg) and one self-contained HTML file built from an atlas's study results."""

from kneuron.report.html import Headline, ReportData, headline, headline_line, render_report, write_report

__all__ = ["Headline", "ReportData", "headline", "headline_line", "render_report", "write_report"]
