"""Reports: report.json, report.md and report.html (with figures) from evaluation results.

The results dict and the number formats are described in docs/reports.md::

    from neurodec.report import write_report, format_summary_table

    paths = write_report("runs/eeg-nice", results, title="EEG to image, demo cohort")
    print(format_summary_table(results))
"""

from neurodec.report.schema import validate_results
from neurodec.report.tables import format_image_summary, format_speech_summary, format_summary_table
from neurodec.report.writer import ReportPaths, similarity_excerpt, write_report

__all__ = ["ReportPaths", "format_image_summary", "format_speech_summary", "format_summary_table",
           "similarity_excerpt", "validate_results", "write_report"]
