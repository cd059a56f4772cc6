"""cellreports: self-contained HTML reports of cellclf runs and evaluations.

Public API::

    from cellreports import write_run_report, write_evaluation_report

    write_run_report("run/", "run/report.html")            # a `cellclf fit` RUN_DIR
    write_evaluation_report(table, classes, spec, "model.joblib", "eval.html", images_root="images/")

The HTML file embeds every image as a data: URI and needs no network or JavaScript.
Plotting libraries are imported only when a report is made.
"""

__all__ = ["NotARunError", "write_evaluation_report", "write_run_report"]


def __getattr__(name: str):
    if name == "write_run_report":
        from cellreports.run_report import write_run_report

        return write_run_report
    if name == "write_evaluation_report":
        from cellreports.evaluation_report import write_evaluation_report

        return write_evaluation_report
    if name == "NotARunError":
        from cellreports.run_dir import NotARunError

        return NotARunError
    raise AttributeError(f"module 'cellreports' has no attribute {name!r}")
