"""Reporting: tables, findings and figure data, all selecting result rows by their fields.

- `tables`: mean ± std over seeds, K columns, base/novel + HM, option sweeps, latest runs;
- `findings`: the notebooks' conclusions checked against the rows, with numbers;
- `figures`: what the notebooks plot, built from runner outcomes and datasets.
"""
from medkit.grids import knowledge_guided
from medkit.reporting.findings import (cilmp_sweep, findings_07, findings_08, knowledge_vs_names,
                                       study_findings, tau_sweep)
from medkit.reporting.tables import (base_novel_table, complete_rows, frame, latest, mean_std, metric_table, option_sweep,
                                     options_of, seed_table, select, shot_table, val_test_gap)

__all__ = ["base_novel_table", "cilmp_sweep", "complete_rows", "findings_07", "findings_08", "frame", "knowledge_guided",
           "knowledge_vs_names", "latest", "mean_std", "metric_table", "option_sweep", "options_of", "seed_table",
           "select", "shot_table", "study_findings", "tau_sweep", "val_test_gap"]
