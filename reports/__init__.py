"""cellreports: self-contained HTML reports of classifier runs and evaluations.

Public API::

    from cellclf.rundir import read_run, evaluation_record      # the records (made by cellclf)
    from cellreports import write_run_report, write_evaluation_report

    write_run_report(read_run("run/"), "run/report.html")
    write_evaluation_report(evaluation_record(evaluation, "model.joblib"), classes, spec, "eval.html",
                            images_root="images/")

The HTML file embeds every image as a data: URI and needs no network or JavaScript.
Plotting libraries are imported only when a report is made.

cellreports does not import cellclf: it shows records it is given and computes no metric.
It reads these attributes (``cellclf.rundir`` defines the records):

- a run (RunRecord): ``run_dir``, ``created``, ``classes``, ``config`` (dict: ``seed``,
  ``cv``), ``versions`` (dict), ``best_by``, ``best`` (a model), ``models`` (fit order),
  ``tuning`` (the tuning.csv DataFrame or None) and ``tuning_missing``, ``shap_missing``
  (why a model has no SHAP summary), and ``data`` with ``input``, ``test_input``,
  ``split``, ``taps``, ``n_features``, ``unlabelled_rows_ignored``,
  ``rows_with_duplicate_images``, ``counts`` ({split: {class: n}}), ``spec``
  (EmbeddingSpec or None) and ``spec_missing``.
- a model (ModelRecord): ``key``, ``title``, ``best``, ``overall`` (dict: n, accuracy,
  balanced_accuracy, macro_f1, log_loss, roc_auc_ovr_macro), ``per_class`` and
  ``confusion`` (DataFrames), ``predictions`` (DataFrame with ``path``, ``label``,
  ``predicted``), ``probabilities(classes)`` ((n, k) array); for a run's model also
  ``val_macro_f1``, ``selection``, ``fit_seconds``, ``params``, ``trials``,
  ``tuning_plot`` (PNG bytes or None), ``tuning_plot_file``, ``tuning_note``,
  ``shap_plot_file``, ``shap_top_file`` and ``shap`` (None, or ``facts`` (dict),
  ``plot`` (PNG bytes or None) and ``top`` (DataFrame or None)).
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
