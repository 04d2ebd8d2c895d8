"""Pictures of a training run, drawn from the JSON files that train.py writes beside the model.

Usage:
    python train.py --plots-only --model-dir DIR   # redraw the pictures of an existing run

    from plots import draw_run
    draw_run("saved_models")                       # the same from Python; returns the PNG paths

`training_curves.png` shows the loss and accuracy of every epoch on the training and validation
splits, the restored best epoch and how training ended (early stopping, all epochs, interrupt).
`confusion_matrix.png` shows the test confusion matrix per segment and, when tracks are known, per
track (majority vote). Only training_history.json and test_metrics.json are read, so an older run
can be redrawn without retraining. `curve_data` and `confusion_data` return exactly the numbers
that are drawn. matplotlib is imported only when drawing, onto the non-interactive Agg canvas: no
display is needed and no global pyplot state is touched.
"""
import json
import math
from pathlib import Path

import numpy as np

from common import DataError, atomic_write

HISTORY_FILE = "training_history.json"  # per-epoch loss and accuracy, written by train.py
METRICS_FILE = "test_metrics.json"  # test scores, best epoch, how training ended (train.py)
CURVES_FILE = "training_curves.png"  # loss and accuracy per epoch
CONFUSION_FILE = "confusion_matrix.png"  # test confusion matrices
DPI = 120  # pixels per inch: text stays sharp on a laptop screen and on a slide
CURVES_SIZE = (12.0, 5.0)  # inches, 1440 x 600 px: loss and accuracy side by side
MATRIX_SIZE = (10.0, 8.4)  # inches, 1200 x 1008 px: one confusion matrix with its colour bar
MATRICES_SIZE = (13.2, 6.3)  # inches, 1584 x 756 px: segment and track matrices side by side
COLOUR_MAP = "Blues"  # sequential, so that a darker cell means a larger share of its row
DARK_CELL = 0.55  # row share above which a cell's count is written in white to stay legible
TRAIN_STYLE = dict(color="tab:blue", marker="o")  # training split's curves
VAL_STYLE = dict(color="tab:orange", marker="s")  # validation split's curves
MARKERS_UP_TO = 40  # mark every epoch's point only while they do not merge into a thick line
TICK_ROTATION = 45  # degrees: long genre names on the x axis neither overlap nor need much height


# ---------------------------------------------------------------------------------------------
# What is drawn


def read_json(path):
    """Parse one of the run's JSON files, or raise DataError naming the file and the fix."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found: pass a model folder written by train.py") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path} cannot be read ({exc}): run train.py again to rewrite it"
                        ) from None


def stop_reason(metrics):
    """How training ended: 'interrupted', 'early stopping', 'all epochs'; None if not recorded."""
    if metrics.get("interrupted"):
        return "interrupted"
    if "early_stopped" not in metrics:  # written by older versions of train.py
        return None
    return "early stopping" if metrics["early_stopped"] else "all epochs"


def curves_title(best_epoch, epochs_run, stop, test_accuracy):
    """One line: the restored epoch, how training ended, and the test accuracy."""
    ending = {
        "early stopping": f"early stopping after epoch {epochs_run} "
                          f"({epochs_run - best_epoch} epochs without a better validation loss)",
        "interrupted": f"interrupted (Ctrl-C) after epoch {epochs_run}",
        "all epochs": f"ran all {epochs_run} epochs",
        None: f"{epochs_run} epochs",
    }[stop]
    return (f"Training curves: best epoch {best_epoch} restored; {ending}; "
            f"test accuracy {test_accuracy:.1f} %")


def curve_data(history, metrics):
    """What training_curves.png draws: per-epoch series (accuracy in %), best epoch, ending."""
    try:
        series = {key: [float(v) for v in history[key]]
                  for key in ("loss", "val_loss", "accuracy", "val_accuracy")}
        epochs_run = len(series["loss"])
        best_epoch = int(metrics["epoch"])
        accuracy = float(metrics["accuracy"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{HISTORY_FILE} or {METRICS_FILE} lacks a value ({exc!r}): "
                        f"they must be written by train.py") from None
    if epochs_run == 0 or any(len(values) != epochs_run for values in series.values()):
        raise DataError(f"{HISTORY_FILE} needs one value per epoch in each of its four lists: "
                        f"it must be written by train.py")
    if not 1 <= best_epoch <= epochs_run:
        raise DataError(f"{METRICS_FILE} names epoch {best_epoch}, but the history has "
                        f"{epochs_run}: they must be written by the same train.py run")
    stop = stop_reason(metrics)
    return {
        "epochs": list(range(1, epochs_run + 1)),
        "loss": {"training": series["loss"], "validation": series["val_loss"]},
        "accuracy": {"training": [100 * v for v in series["accuracy"]],
                     "validation": [100 * v for v in series["val_accuracy"]]},
        "best_epoch": best_epoch, "stop": stop, "test_accuracy": 100 * accuracy,
        "title": curves_title(best_epoch, epochs_run, stop, 100 * accuracy),
    }


def matrix_panel(counts, genres, accuracy, unit, title):
    """One confusion matrix: counts, row shares (recall, NaN for an empty row) and its title."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (len(genres), len(genres)):
        raise DataError(f"{METRICS_FILE} has a confusion matrix of shape {counts.shape} for "
                        f"{len(genres)} genres: it must be written by train.py")
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0)
    correct, total = int(np.trace(counts)), int(counts.sum())
    return {
        "genres": list(genres), "counts": counts, "row_share": shares, "unit": unit,
        "accuracy": accuracy, "correct": correct, "total": total,
        "title": f"{title}: accuracy {100 * accuracy:.1f} % ({correct}/{total} {unit})",
    }


def confusion_data(metrics):
    """The panels confusion_matrix.png draws: per segment, then per track when tracks are known."""
    try:
        genres = list(metrics["per_genre"])
        panels = [matrix_panel(metrics["confusion_matrix"], genres, float(metrics["accuracy"]),
                               "segments", "Per segment")]
        tracks = metrics.get("track_level")
        if tracks and "confusion_matrix" in tracks:  # older runs kept only the accuracies
            panels.append(matrix_panel(tracks["confusion_matrix"], genres,
                                       float(tracks["accuracy"]), "tracks",
                                       "Per track (majority vote of its segments)"))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{METRICS_FILE} lacks a value ({exc!r}): it must be written by "
                        f"train.py") from None
    return panels


def confusion_title(metrics):
    """The figure's title; a segment split is flagged, as its accuracy is optimistic."""
    title = "Test confusion matrix (rows: true genre; colour: share of the row, i.e. recall)"
    if metrics.get("split_kind") == "segment":
        title += "\nsplit by segment: a test track's other segments may be in training (optimistic)"
    return title


# ---------------------------------------------------------------------------------------------
# Drawing


def new_figure(size):
    """An empty Figure on the Agg canvas; matplotlib is imported here and only here."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_series(ax, data, key, ylabel):
    """Training and validation curves of one quantity, with the best epoch marked."""
    from matplotlib.ticker import MaxNLocator

    epochs, best = data["epochs"], data["best_epoch"]
    markersize = 3 if len(epochs) <= MARKERS_UP_TO else 0
    for split, style in (("training", TRAIN_STYLE), ("validation", VAL_STYLE)):
        ax.plot(epochs, data[key][split], label=split, markersize=markersize, **style)
    mark_ending(ax, data)  # before the best epoch's line, which may fall on the same epoch
    ax.axvline(best, color="green", linestyle="--", linewidth=1.2,
               label=f"best epoch {best} (lowest val. loss), restored")
    ax.plot([best], [data[key]["validation"][best - 1]], marker="*", markersize=14,
            color="green", linestyle="none", clip_on=False)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, len(epochs) + 0.5)
    ax.grid(alpha=0.3)


def mark_ending(ax, data):
    """Shade the epochs after the best one when early stopping ended the run; mark an interrupt."""
    best, last = data["best_epoch"], data["epochs"][-1]
    if data["stop"] == "early stopping" and last > best:
        ax.axvspan(best, last, color="grey", alpha=0.15,
                   label=f"no better val. loss for {last - best} epochs: early stop")
    elif data["stop"] == "interrupted":
        ax.axvline(last, color="red", linewidth=3, alpha=0.5,
                   label=f"interrupted after epoch {last}")


def draw_curves(data):
    """The training_curves.png figure: loss on the left, accuracy in % on the right."""
    figure = new_figure(CURVES_SIZE)
    loss_ax, accuracy_ax = figure.subplots(1, 2)
    plot_series(loss_ax, data, "loss", "cross-entropy loss (mean per segment)")
    loss_ax.set_title("Loss")
    plot_series(accuracy_ax, data, "accuracy", "accuracy (%)")
    accuracy_ax.axhline(data["test_accuracy"], color="purple", linestyle=":", linewidth=1.5,
                        label=f"test accuracy of the best epoch ({data['test_accuracy']:.1f} %)")
    accuracy_ax.set_title("Accuracy")
    accuracy_ax.set_ylim(0, 102)  # a little headroom, so that a line at 100 % stays visible
    accuracy_ax.set_yticks(range(0, 101, 20))
    # One legend below both panels, so that it never hides a curve.
    handles, labels = accuracy_ax.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize=9)
    figure.suptitle(data["title"], fontsize=11)
    return figure


def plot_matrix(ax, panel):
    """One confusion matrix: colour by row share, the count written in every cell."""
    from matplotlib import colormaps

    cmap = colormaps[COLOUR_MAP].with_extremes(bad="lightgrey")  # grey: a genre with no test item
    image = ax.imshow(np.ma.masked_invalid(panel["row_share"]), cmap=cmap, vmin=0, vmax=1)
    genres, counts, shares = panel["genres"], panel["counts"], panel["row_share"]
    size = 9 if len(genres) <= 12 else 7
    for (row, column), count in np.ndenumerate(counts):
        dark = not math.isnan(shares[row, column]) and shares[row, column] > DARK_CELL
        ax.text(column, row, str(count), ha="center", va="center", fontsize=size,
                color="white" if dark else ("black" if count else "silver"))
    ticks = range(len(genres))
    totals = counts.sum(axis=1)
    ax.set_xticks(ticks, genres, rotation=TICK_ROTATION, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, [f"{genre} ({total})" for genre, total in zip(genres, totals)])
    ax.set_xlabel("predicted genre")
    ax.set_ylabel(f"true genre (number of test {panel['unit']})")
    ax.set_title(panel["title"], fontsize=10)
    return image


def draw_confusion(panels, title):
    """The confusion_matrix.png figure: one matrix per panel and one shared colour bar."""
    figure = new_figure(MATRIX_SIZE if len(panels) == 1 else MATRICES_SIZE)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        image = plot_matrix(ax, panel)
    colour_bar = figure.colorbar(image, ax=list(axes), shrink=0.8)
    colour_bar.set_label("share of the true genre's test items (%)")
    colour_bar.set_ticks([0, 0.25, 0.5, 0.75, 1], labels=["0", "25", "50", "75", "100"])
    figure.suptitle(title, fontsize=11)
    return figure


def save_figure(figure, path, flag="--model-dir"):
    """Write a figure as PNG, atomically; flag names the option that chose its folder."""
    with atomic_write(path, flag=flag) as handle:
        figure.savefig(handle, format="png")


def draw_run(model_dir, flag="--model-dir"):
    """Draw both pictures of the run in model_dir from its JSON files; return their paths.

    flag names the option that chose model_dir, for the message of a failed write.
    """
    model_dir = Path(model_dir)
    history = read_json(model_dir / HISTORY_FILE)
    metrics = read_json(model_dir / METRICS_FILE)
    if not isinstance(history, dict) or not isinstance(metrics, dict):
        raise DataError(f"{model_dir}: {HISTORY_FILE} and {METRICS_FILE} must hold JSON objects "
                        f"as train.py writes them")
    try:
        curves, panels = curve_data(history, metrics), confusion_data(metrics)
    except DataError as exc:
        raise DataError(f"{model_dir}: {exc}") from None
    paths = [model_dir / CURVES_FILE, model_dir / CONFUSION_FILE]
    save_figure(draw_curves(curves), paths[0], flag)
    save_figure(draw_confusion(panels, confusion_title(metrics)), paths[1], flag)
    return paths
