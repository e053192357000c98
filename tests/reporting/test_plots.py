"""The plots draw: every panel of each figure, rendered from a real tiny store whose test split is evaluated
only at some epochs, has pixels inside its axes that a render without its data lacks; the scatter keeps a
method's configurations apart, and the labels of 30 configurations do not overlap."""

import copy
import itertools

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

import kdbench
from kdbench import reporting
from kdbench.core.spec import RunSpec
from kdbench.reporting.plots import accuracy_vs_overhead_figure, learning_curves_figure


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """student and kd at two temperatures, two seeds; 5 epochs tested at epochs 3 and 5 only (eval_every 3),
    so no two tested epochs are adjacent: a line without markers would draw nothing."""
    out = tmp_path_factory.mktemp("store")
    kdbench.run(
        progress=lambda line: None,
        dataset="synthetic",
        pairs="resnet14:resnet8",
        methods=["student", "kd"],
        vam="off",
        seeds=2,
        recipe={"epochs": 5, "train_subset": 128, "eval_every": 3},
        teacher_recipe={"epochs": 1, "train_subset": 128},
        hp={"kd.temperature": [2, 4]},
        jobs=1,
        out=str(out),
    )
    return kdbench.load_records(out)


def _pixels(figure) -> np.ndarray:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _data_pixels(figure) -> list[int]:
    """For each visible axes, the pixels inside it that differ from a render with its data (lines, points,
    error bars) hidden: what the data drew."""
    full = _pixels(figure)
    axes = [axis for axis in figure.axes if axis.get_visible()]
    data = [artist for axis in axes for artist in [*axis.lines, *axis.collections] if artist.get_visible()]
    for artist in data:
        artist.set_visible(False)
    blank = _pixels(figure)
    height = full.shape[0]
    counts = []
    for axis in axes:
        box = axis.get_window_extent()
        rows = slice(int(height - box.y1) + 2, int(height - box.y0) - 2)  # inside the frame
        columns = slice(int(box.x0) + 2, int(box.x1) - 2)
        counts.append(int((full[rows, columns] != blank[rows, columns]).any(axis=-1).sum()))
    return counts


def test_learning_curves_draw_tested_epochs_and_the_training_loss(store):
    figure = learning_curves_figure(store)
    accuracy, loss = (axis for axis in figure.axes if axis.get_visible())
    assert accuracy.get_ylabel() == "test top-1 (%)" and loss.get_ylabel() == "training loss"
    assert all(count > 100 for count in _data_pixels(figure))
    # one curve per configuration, as the board's rows; the tested epochs only, the loss at every epoch
    curves = {line.get_label(): line for line in accuracy.lines}
    assert sorted(curves) == ["kd (temperature=2.0) (n=2)", "kd (temperature=4.0) (n=2)", "student (n=2)"]
    assert all(list(line.get_xdata()) == [3, 5] for line in curves.values())
    assert all(list(line.get_xdata()) == [1, 2, 3, 4, 5] for line in loss.lines)


def test_the_scatter_draws_one_point_per_configuration(store):
    figure = accuracy_vs_overhead_figure(store)
    assert all(count > 100 for count in _data_pixels(figure))
    for axis in figure.axes:
        assert sorted(text.get_text() for text in axis.texts) == [
            "kd (temperature=2.0)",
            "kd (temperature=4.0)",
            "student",
        ]


def _thirty_configurations(records: list[dict]) -> list[dict]:
    """30 configurations of kd (temperatures 1..30, one seed each) copied from a real kd record, their
    accuracies and costs nearly equal: the points crowd together, as a grid search's do."""
    kd = next(record for record in records if record["spec"]["method"] == "kd")
    crowd = []
    for index in range(30):
        record = copy.deepcopy(kd)
        record["spec"]["hp"]["temperature"] = float(index + 1)
        record["run_id"] = RunSpec.from_dict(record["spec"]).run_id
        record["metrics"]["last_top1"] = 50 + (index % 5) * 0.1
        record["overhead"]["train_flops_per_image"] *= 1 + (index % 3) * 0.01
        crowd.append(record)
    return crowd


def test_thirty_labels_do_not_overlap(store):
    figure = accuracy_vs_overhead_figure(_thirty_configurations(store))
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for axis in figure.axes:
        boxes = [Text.get_window_extent(text, renderer) for text in axis.texts]  # the text, not its line
        assert len(boxes) == 30
        overlapping = [(a, b) for a, b in itertools.combinations(range(30), 2) if boxes[a].overlaps(boxes[b])]
        assert not overlapping, [(axis.texts[a].get_text(), axis.texts[b].get_text()) for a, b in overlapping]


def test_thirty_curves_keep_their_legend_off_the_panel(store):
    figure = learning_curves_figure(store + _thirty_configurations(store))
    figure.canvas.draw()
    accuracy = figure.axes[0]
    legend = accuracy.get_legend()
    assert (
        len(legend.get_texts()) == 31
    )  # the student and 30 temperatures (the copies at 2 and 4 join their runs)
    assert not legend.get_window_extent().overlaps(accuracy.get_window_extent())
    markers = {(line.get_color(), line.get_marker()) for line in accuracy.lines}
    assert len(markers) == len(accuracy.lines)  # no two curves look alike


def test_plots_write_pngs(store, tmp_path):
    for plot in (reporting.plot_accuracy_vs_overhead, reporting.plot_learning_curves):
        path = plot(store, tmp_path / "plots" / f"{plot.__name__}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
