"""cellreports: self-contained HTML reports of classifier runs and evaluations.

Public API::

    from cellclf.rundir import read_run, evaluation_record      # the records (made by cellclf)
    from cellreports import write_run_report, write_evaluation_report

    write_run_report(read_run("run/"), "run/report.html")
    write_evaluation_report(evaluation_record(evaluation, "model.joblib"), classes, spec, "eval.html",
                            images_root="images/")

The HTML file embeds every image as a data: URI and needs no network or JavaScript.
Plotting libraries are imported only when a report is made.

cellreports does not import cellclf at run time: it shows records it is given and computes
no metric. The records are :class:`cellclf.rundir.records.RunRecord` (a run) and
:class:`cellclf.rundir.records.ModelRecord` (a model scored on labelled images), typed records
without I/O; the functions here are annotated with them (imported for type checkers only).
"""

__all__ = ["is_report", "write_evaluation_report", "write_run_report"]


def __getattr__(name: str):
    if name == "write_run_report":
        from cellreports.run_report import write_run_report

        return write_run_report
    if name == "is_report":
        from cellreports.html import is_report

        return is_report
    if name == "write_evaluation_report":
        from cellreports.evaluation_report import write_evaluation_report

        return write_evaluation_report
    raise AttributeError(f"module 'cellreports' has no attribute {name!r}")
