"""Explorers for JupyterLab: small ipywidgets apps over what a notebook computed (the only
module that imports ipywidgets). Each control change is one call into
`medkit.reporting.explore`, where the logic lives and is tested; the notebooks show an
explorer only when `interactive` is true, so headless runs keep their static figures.

    display(PredictionBrowser(outcomes, datasets))     # 02-06, 08: per-image predictions
    display(FeatureExplorer(outcomes, datasets, adapter))  # t-SNE, zero-shot vs learned
    display(ResultsExplorer("outputs"))                # any notebook: results.csv, metric vs K
    display(PromptExplorer({name: (dataset, scores)})) # 07: BiomedCoOp's pruning per class
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython import get_ipython
from IPython.display import display
from matplotlib.figure import Figure

from medkit.data import Dataset
from medkit.experiment import Outcome
from medkit.methods import get_spec
from medkit.reporting import explore
from medkit.reporting.explore import ANY

EXPLORER_CLASS = "medkit-explorer"  # the browser test finds explorers by this CSS class


class Explorer(widgets.VBox):
    """Controls above an output area. `view()` returns what to show (DataFrames, Figures,
    strings); every control change calls it again. `shown` keeps the last result, so the
    callbacks are testable without a front end; a ValueError is shown as a message."""

    def __init__(self, title: str, controls: Sequence[widgets.Widget], selector: widgets.Widget | None = None) -> None:
        self.output = widgets.Output()
        self.shown: list[Any] = []
        self._quiet = False  # set while one control updates the options of another
        self.controls = list(controls)
        rows = [widgets.HBox(self.controls[i:i + 3]) for i in range(0, len(self.controls), 3)]
        super().__init__([widgets.HTML(f"<b>{title}</b>"), *rows, self.output])
        self.add_class(EXPLORER_CLASS)
        for c in self.controls:
            if c is not selector:  # the run / dataset selector refreshes through its own handler, once
                c.observe(self._changed, names="value")

    def view(self) -> list[Any]:
        raise NotImplementedError

    def _changed(self, change: dict) -> None:
        if not self._quiet:
            self.refresh()

    def refresh(self) -> list[Any]:
        try:
            self.shown = self.view()
        except ValueError as e:
            self.shown = [f"✗ {e}"]
        if get_ipython() is not None:  # a kernel: render (tests read `shown`)
            self.output.clear_output(wait=True)
            with self.output:
                for item in self.shown:
                    print(item) if isinstance(item, str) else display(item)  # a message: plain text, no quotes
        for item in self.shown:  # shown once, in the output area: the inline backend must not show it again
            if isinstance(item, Figure):
                plt.close(item)
        return self.shown

    def _set_options(self, control: widgets.Widget, options: Sequence, value: Any) -> None:
        self._quiet = True
        try:
            control.options = list(options)
            control.value = value
        finally:
            self._quiet = False


def _dropdown(description: str, options: Sequence, value: Any = None, width: str = "22em") -> widgets.Dropdown:
    options = list(options)
    return widgets.Dropdown(description=description, options=options, value=value if value is not None else options[0],
                            layout=widgets.Layout(width=width), style={"description_width": "initial"})


class PredictionBrowser(Explorer):
    """Test images of one run with true vs predicted class and top-k bars; filter to mistakes
    or one true class, or pick a confusion-matrix cell (true → predicted) to list its images."""

    def __init__(self, outcomes: Mapping[str, Sequence[Outcome]], datasets: Mapping[str, Dataset], k: int = 3,
                 n_images: int = 8) -> None:
        self.runs = explore.run_choices(outcomes, {n: d.labels.n_classes for n, d in datasets.items()})
        if not self.runs:
            raise ValueError("no single-label run with test predictions to browse")
        self.datasets, self.k, self.n_images = datasets, k, n_images
        self._tables: dict[str, pd.DataFrame] = {}
        self.run = _dropdown("run", self.runs, width="42em")
        self.show = widgets.ToggleButtons(options=["all", "mistakes", "correct"], value="all", description="show",
                                          style={"button_width": "6.5em"})
        self.true = _dropdown("true class", [ANY])
        self.cell = _dropdown("confusion cell", [ANY], width="30em")
        self.run.observe(self._new_run, names="value")
        super().__init__("Prediction browser", [self.run, self.show, self.true, self.cell], self.run)
        self._new_run()

    def table(self) -> pd.DataFrame:
        label = self.run.value
        if label not in self._tables:
            name, outcome = self.runs[label]
            self._tables[label] = explore.run_predictions(self.datasets[name], outcome, self.k)
        return self._tables[label]

    def _new_run(self, change: dict | None = None) -> None:
        name, _ = self.runs[self.run.value]
        classes = self.datasets[name].labels.classnames
        cells = explore.confusion_cells(self.table(), classes)
        self._cells = {explore.cell_label(*c): c for c in cells}
        self._set_options(self.true, [ANY, *classes], ANY)
        self._set_options(self.cell, [ANY, *self._cells], ANY)
        if change is not None or not self.shown:
            self.refresh()

    def matches(self) -> pd.DataFrame:
        true, predicted = self.true.value, ANY
        if self.cell.value != ANY:
            true, predicted, _ = self._cells[self.cell.value]
        return explore.filter_predictions(self.table(), self.show.value, true, predicted)

    def view(self) -> list[Any]:
        name, outcome = self.runs[self.run.value]
        ds, table, rows = self.datasets[name], self.table(), self.matches()
        acc = float(table["correct"].mean())
        cm = explore.run_confusion_figure(ds, table, f"{self.run.value} · test accuracy {acc:.3f}")
        grid = explore.predictions_figure(ds, rows, self.n_images)
        tops = [f"{kind}{j}" for j in range(1, self.k + 1) for kind in ("top", "p") if f"top{j}" in rows.columns]
        return [f"{len(rows)} of {len(table)} test images match", grid, rows[["true", "p_true", *tops]].head(20), cm]


class FeatureExplorer(Explorer):
    """t-SNE of test images (dots) and class text features (stars), zero-shot vs learned;
    colour by class or group, highlight one class. The embedding is computed once per run."""

    def __init__(self, outcomes: Mapping[str, Sequence[Outcome]], datasets: Mapping[str, Dataset], adapter,
                 points: int = 400) -> None:
        runs = explore.run_choices(outcomes, {n: d.labels.n_classes for n, d in datasets.items()})
        # prompt learners (shallow or deep): their class text features are learned
        self.runs = {k: v for k, v in runs.items() if get_spec(v[1].setting.method).kind in ("prompt", "deep_prompt")}
        if not self.runs:
            raise ValueError("no prompt-learning run (with class text features) to embed")
        self.datasets, self.adapter, self.points = datasets, adapter, points
        self._points: dict[str, pd.DataFrame] = {}
        self.run = _dropdown("run", self.runs, width="42em")
        self.colour = widgets.ToggleButtons(options=["class", "group"], value="class", description="colour by")
        self.highlight = _dropdown("highlight", [ANY])
        self.panel = widgets.ToggleButtons(options=["both", "zero-shot", "learned"], value="both", description="show")
        self.run.observe(self._new_run, names="value")
        super().__init__("Feature explorer (t-SNE)", [self.run, self.colour, self.highlight, self.panel], self.run)
        self._new_run()

    def points_of(self, label: str) -> pd.DataFrame:
        if label not in self._points:
            name, outcome = self.runs[label]
            ds = self.datasets[name]
            panels, y = explore.feature_panels(outcome, ds, self.adapter, self.points)
            groups = [ds.labels.group_of[c] for c in ds.labels.classnames] if ds.labels.has_groups else None
            self._points[label] = explore.tsne_points(panels, y, ds.labels.classnames, groups)
        return self._points[label]

    def _new_run(self, change: dict | None = None) -> None:
        name, _ = self.runs[self.run.value]
        ds = self.datasets[name]
        self._set_options(self.highlight, [ANY, *ds.labels.classnames], ANY)
        self._set_options(self.colour, ["class", "group"] if ds.labels.has_groups else ["class"], "class")
        if change is not None or not self.shown:
            self.refresh()

    def view(self) -> list[Any]:
        pts = self.points_of(self.run.value)
        names = list(dict.fromkeys(pts["panel"]))
        panels = {"both": names, "zero-shot": names[:1], "learned": names[1:]}[self.panel.value]
        return [explore.tsne_view_figure(pts, self.colour.value, self.highlight.value, panels)]


class ResultsExplorer(Explorer):
    """`results.csv` (complete runs) narrowed by metric, protocol, datasets, methods and K: the
    mean ± std table and the metric-vs-K plot with ± std bands update together."""

    def __init__(self, results: pd.DataFrame | str | Path = "outputs", metric: str | None = None,
                 datasets: Sequence[str] = (), protocol: str = ANY) -> None:
        if not isinstance(results, pd.DataFrame):  # an outputs folder (relative: the project's)
            from medkit.paths import project_path
            from medkit.runs import read_results

            results = read_results(project_path(results))
        if results.empty:
            raise ValueError("results.csv has no rows yet: run a notebook first")
        self.results = results
        choices = explore.result_choices(results)
        metric = metric or next((m for m in ("acc", "macro_auc", "dice") if m in choices.metrics), choices.metrics[0])
        protocols = [ANY, *dict.fromkeys(results["protocol"].dropna())] if "protocol" in results else [ANY]
        self.metric = _dropdown("metric", choices.metrics, metric, width="16em")
        self.protocol = _dropdown("protocol", protocols, protocol, width="16em")
        layout = widgets.Layout(width="20em", height="8em")
        self.datasets = widgets.SelectMultiple(options=choices.datasets, value=[d for d in datasets if d in choices.datasets],
                                               description="datasets", layout=layout)
        self.methods = widgets.SelectMultiple(options=choices.methods, description="methods", layout=layout)
        self.shots = widgets.SelectMultiple(options=choices.shots, description="K", layout=widgets.Layout(width="10em", height="8em"))
        super().__init__("Results explorer (nothing selected: all)",
                         [self.metric, self.protocol, self.datasets, self.methods, self.shots])
        self.refresh()

    def rows(self) -> pd.DataFrame:
        df = self.results if self.protocol.value == ANY else self.results[self.results["protocol"] == self.protocol.value]
        return explore.results_view(df, self.metric.value, self.datasets.value, self.methods.value, self.shots.value)

    def view(self) -> list[Any]:
        rows = self.rows()
        return [explore.results_table(rows, self.metric.value), explore.results_figure(rows, self.metric.value)]


class PromptExplorer(Explorer):
    """BiomedCoOp's selective prompting for one class: its description sentences, the score of
    each prompt (the batch mean of its largest logit; pruning acts on a prompt index, for all
    classes at once) and how often the paper's MAD rule and the reference code's z-score rule
    keep it at the chosen τ."""

    def __init__(self, scores: Mapping[str, tuple[Dataset, Any]], tau: float = 1.5) -> None:
        if not scores:
            raise ValueError("no dataset with description sentences to explore")
        self.scores = dict(scores)
        self.dataset = _dropdown("dataset", self.scores)
        self.klass = _dropdown("class", self._classes())
        self.tau = widgets.FloatSlider(value=tau, min=0.25, max=4.0, step=0.25, description="τ")
        self.dataset.observe(self._new_dataset, names="value")
        super().__init__("Prompt explorer (BiomedCoOp pruning)", [self.dataset, self.klass, self.tau], self.dataset)
        self.refresh()

    @classmethod
    def from_features(cls, adapter, train_features: Mapping[str, tuple[Dataset, Any]], tau: float = 1.5) -> "PromptExplorer":
        """From {name: (dataset, frozen training-image features [N, E])}: datasets without
        description sentences are left out."""
        from medkit.methods import BiomedCoOp

        scores = {}
        for name, (ds, feats) in train_features.items():
            if ds.descriptions:
                probe = BiomedCoOp(adapter, ds.labels.classnames, ds.descriptions)
                scores[name] = (ds, explore.prompt_batch_scores(probe, feats))
        return cls(scores, tau)

    def _classes(self) -> list[str]:
        return list(self.scores[self.dataset.value][0].labels.classnames)

    def _new_dataset(self, change: dict) -> None:
        classes = self._classes()
        self._set_options(self.klass, classes, classes[0])
        self.refresh()

    def table(self) -> pd.DataFrame:
        ds, batch_scores = self.scores[self.dataset.value]
        sentences = list(ds.descriptions[self.klass.value])
        n = batch_scores.shape[1]
        sentences = (sentences * (n // max(len(sentences), 1) + 1))[:n]  # fewer sentences wrap round, as in the method
        n_out = ds.meta.get("world", {}).get("n_outlier_sentences", 0)
        from medkit.reporting.figures import outlier_mask

        return explore.prompt_table(batch_scores, sentences, self.tau.value, outlier_mask(n, n_out) if n_out else None)

    def view(self) -> list[Any]:
        table = self.table()
        fig, ax = plt.subplots(figsize=(max(5, 0.3 * len(table)), 2.6), layout="constrained")
        colours = ["seagreen" if m and z else "goldenrod" if m or z else "indianred"
                   for m, z in zip(table["MAD kept"], table["z-score kept"])]
        ax.bar(table.index, table["score"], color=colours)
        ax.set_ylim(table["score"].min() - 0.05 * (float(np.ptp(table["score"])) or 1), None)
        ax.set_xlabel("prompt (green: both rules keep it, amber: one, red: neither)")
        ax.set_ylabel("score")
        ax.set_title(f"{self.klass.value} · τ = {self.tau.value:g}", fontsize=9)
        return [table, fig]


def show_if(interactive: bool, make: Callable[[], Explorer]) -> Explorer | None:
    """Build and display an explorer only in an interactive session (`interactive` is the
    notebook's parameter; papermill passes False), so headless runs have no widget output."""
    if not interactive:
        return None
    try:
        explorer = make()
    except ValueError as e:  # nothing to explore yet (no rows, no prompt learner): say so, do not fail the cell
        print(f"explorer not shown: {e}")
        return None
    display(explorer)
    return explorer
