"""Pictures of a training run, drawn from the JSON files that train.py writes beside the model.

Usage:
    python train.py --plots-only --model-dir DIR   # redraw the pictures of an existing run
    plots.draw_run("saved_models")                 # or draw_cv: a cross-validation's matrices

Only the JSON files are read (no retraining); matplotlib draws on its Agg canvas (no display).
"""
import json
from pathlib import Path

import numpy as np

from common import DataError, atomic_write, check_replaceable, read_head

HISTORY_FILE = "training_history.json"  # per-epoch loss and accuracy, written by train.py
METRICS_FILE = "test_metrics.json"  # test scores, best epoch, how training ended (train.py)
CV_METRICS_FILE = "cv_metrics.json"  # a cross-validation's folds and pooled scores (train.py)
CURVES_FILE = "training_curves.png"  # loss and accuracy per epoch
CONFUSION_FILE = "confusion_matrix.png"  # test confusion matrices, by segment and by track
CV_CONFUSION_FILE = "cv_confusion_matrix.png"  # the same, pooled over the folds
DPI = 120  # pixels per inch: text stays sharp on a laptop screen and on a slide
CURVES_SIZE = (12.0, 5.0)  # inches: loss and accuracy side by side
MATRIX_SIZE = (10.0, 8.4)  # inches: one confusion matrix with its colour bar
MATRICES_SIZE = (13.2, 6.3)  # inches: segment and track matrices side by side
COLOUR_MAP = "Blues"  # sequential: a darker cell is a larger share of its row
DARK_CELL = 0.55  # row share above which a cell's count is written in white to stay legible
PNG_MARK = b"tEXtSoftware\x00Matplotlib"  # the metadata matplotlib writes into its PNG files


def is_picture(path):
    """True when path is a PNG file that matplotlib wrote (so one of ours may be replaced)."""
    head = read_head(path)
    return head.startswith(b"\x89PNG\r\n\x1a\n") and PNG_MARK in head


def read_run(model_dir, *names):
    """The JSON objects of a run's files, or DataError naming the file and the fix."""
    objects = []
    for path in (Path(model_dir) / name for name in names):
        try:
            objects.append(json.loads(path.read_text(encoding="utf-8")))
            objects[-1].keys()  # AttributeError for anything but an object
        except FileNotFoundError:
            raise DataError(f"{path} not found: pass a model folder written by train.py") from None
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
            raise DataError(f"{path} cannot be read ({exc!r}): run train.py again") from None
    return objects


def curve_data(history, metrics):
    """What training_curves.png draws: per-epoch series (accuracy in %), best epoch, ending."""
    series = {key: [float(v) for v in history[key]]
              for key in ("loss", "val_loss", "accuracy", "val_accuracy")}
    epochs, best = len(series["loss"]), int(metrics["epoch"])
    if epochs == 0 or {len(v) for v in series.values()} != {epochs} or not 1 <= best <= epochs:
        raise ValueError(f"{HISTORY_FILE} and {METRICS_FILE} do not belong to one run")
    stop = ("interrupted" if metrics.get("interrupted") else
            "loss not finite" if metrics.get("loss_not_finite") else
            "early stopping" if metrics.get("early_stopped") else "all epochs")
    ending = {"interrupted": f"interrupted after epoch {epochs}", "loss not finite": f"stopped "
              f"after epoch {epochs}: the next epoch's loss was not finite",
              "all epochs": f"ran all "
              f"{epochs} epochs", "early stopping": f"early stopping after epoch {epochs} "
              f"({epochs - best} epochs without a better validation loss)"}[stop]
    test = 100 * float(metrics["accuracy"])
    return {"epochs": list(range(1, epochs + 1)), "best_epoch": best, "stop": stop,
            "loss": {"training": series["loss"], "validation": series["val_loss"]},
            "accuracy": {"training": [100 * v for v in series["accuracy"]],
                         "validation": [100 * v for v in series["val_accuracy"]]},
            "test_accuracy": test, "title": f"Training curves: best epoch {best} restored; "
                                            f"{ending}; test accuracy {test:.1f} %"}


def confusion_data(metrics):
    """The panels of a confusion picture (counts, row shares, title): per segment, then per
    track when tracks are known. A row share is the genre's recall, NaN for an empty row."""
    genres, panels, tracks = list(metrics["per_genre"]), [], metrics.get("track_level")
    for unit, scope in [("segments", metrics)] + ([("tracks", tracks)] if tracks else []):
        counts = np.asarray(scope["confusion_matrix"], dtype=np.int64)
        if counts.shape != (len(genres), len(genres)):
            raise ValueError(f"a confusion matrix of shape {counts.shape} for {len(genres)} genres")
        totals = counts.sum(axis=1, keepdims=True)
        correct, total = int(np.trace(counts)), int(counts.sum())
        what = "Per segment" if unit == "segments" else "Per track (majority vote of its segments)"
        panels.append({"genres": genres, "counts": counts, "unit": unit, "row_share": np.divide(
            counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0), "title":
            f"{what}: accuracy {100 * correct / max(total, 1):.1f} % ({correct}/{total} {unit})"})
    return panels


def new_figure(size):
    """An empty Figure on the Agg canvas; matplotlib is imported here and only here."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_series(ax, data, key, ylabel, title):
    """Training and validation curves of one quantity, the best epoch and the ending marked."""
    epochs, best, last = data["epochs"], data["best_epoch"], data["epochs"][-1]
    for split, style in (("training", "o-"), ("validation", "s-")):
        ax.plot(epochs, data[key][split], style, label=split, markersize=3)
    if data["stop"] == "early stopping" and last > best:
        ax.axvspan(best, last, color="grey", alpha=0.15,
                   label=f"no better val. loss for {last - best} epochs: early stop")
    elif data["stop"] == "interrupted":
        ax.axvline(last, color="red", linewidth=3, alpha=0.5, label=f"interrupted after {last}")
    ax.axvline(best, color="green", linestyle="--", label=f"best epoch {best}, restored")
    ax.plot([best], [data[key]["validation"][best - 1]], "*", markersize=14, color="green")
    ax.set(xlabel="epoch", ylabel=ylabel, xlim=(0.5, last + 0.5), title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)


def draw_curves(data):
    """The training_curves.png figure: loss on the left, accuracy in % on the right."""
    figure = new_figure(CURVES_SIZE)
    loss_ax, accuracy_ax = figure.subplots(1, 2)
    plot_series(loss_ax, data, "loss", "cross-entropy loss (mean per segment)", "Loss")
    plot_series(accuracy_ax, data, "accuracy", "accuracy (%)", "Accuracy")
    accuracy_ax.axhline(data["test_accuracy"], color="purple", linestyle=":",
                        label=f"test accuracy of the best epoch ({data['test_accuracy']:.1f} %)")
    accuracy_ax.set(ylim=(0, 102), yticks=range(0, 101, 20))  # 100 % stays visible
    handles, labels = accuracy_ax.get_legend_handles_labels()  # one legend below both panels
    figure.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize=9)
    figure.suptitle(data["title"], fontsize=11)
    return figure


def plot_matrix(ax, panel):
    """One confusion matrix: colour by row share, the count written in every cell."""
    ax.set_facecolor("lightgrey")  # shows through the masked (NaN) rows: genres with no item
    image = ax.imshow(np.ma.masked_invalid(panel["row_share"]), cmap=COLOUR_MAP, vmin=0, vmax=1)
    genres, counts, shares = panel["genres"], panel["counts"], panel["row_share"]
    for (row, column), count in np.ndenumerate(counts):
        ax.text(column, row, str(count), ha="center", va="center",
                fontsize=9 if len(genres) <= 12 else 7, color="white" if shares[row, column]
                > DARK_CELL else ("black" if count else "silver"))  # NaN > x is False
    ax.set_xticks(range(len(genres)), genres, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(genres)), [f"{g} ({n})" for g, n in zip(genres, counts.sum(axis=1))])
    ax.set(xlabel="predicted genre", ylabel=f"true genre (number of test {panel['unit']})")
    ax.set_title(panel["title"], fontsize=10)
    return image


def draw_confusion(panels, title):
    """A confusion picture: one matrix per panel and one shared colour bar."""
    figure = new_figure(MATRIX_SIZE if len(panels) == 1 else MATRICES_SIZE)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    images = [plot_matrix(ax, panel) for ax, panel in zip(axes, panels)]
    figure.colorbar(images[0], ax=list(axes), shrink=0.8, label="share of the true genre's test "
                    "items (%)").set_ticks([0, .25, .5, .75, 1], labels="0 25 50 75 100".split())
    figure.suptitle(title, fontsize=11)
    return figure


def save_figures(model_dir, make, *names, flag="--model-dir"):
    """Write the figures make() returns to names, atomically, replacing only our pictures."""
    try:
        figures = make()
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{model_dir}: its JSON files are not as train.py writes them ({exc!r}): "
                        f"train again") from None
    paths = [Path(model_dir) / name for name in names]
    for figure, path in zip(figures, paths):
        check_replaceable(path, flag, "a picture", is_picture)
        with atomic_write(path, flag=flag) as handle:
            figure.savefig(handle, format="png")
    return paths


def draw_run(model_dir, flag="--model-dir"):
    """Draw the training curves and the test confusion matrices of a run; return their paths."""
    history, metrics = read_run(model_dir, HISTORY_FILE, METRICS_FILE)
    title = "Test confusion matrix (rows: true genre; colour: share of the row, i.e. recall)" + (
        "\nsplit by segment: a test track's other segments may be in training (optimistic)"
        if metrics.get("split_kind") == "segment" else "")
    return save_figures(model_dir, lambda: [draw_curves(curve_data(history, metrics)),
                                            draw_confusion(confusion_data(metrics), title)],
                        CURVES_FILE, CONFUSION_FILE, flag=flag)


def draw_cv(model_dir, flag="--model-dir"):
    """Draw the confusion matrices of a cross-validation, pooled over its folds."""
    (metrics,) = read_run(model_dir, CV_METRICS_FILE)
    return save_figures(model_dir, lambda: [draw_confusion(confusion_data(metrics), (
        f"Confusion matrix pooled over {len(metrics['runs'])} of {metrics['folds']} folds by "
        f"{metrics['split_by']}: every item tested once (rows: true genre)"))],
                        CV_CONFUSION_FILE, flag=flag)
