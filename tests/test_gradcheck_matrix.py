"""gradcheck_matrix's heatmaps: exact zeros kept apart (not painted as 1e-18), tolerances
marked, cells above them framed, the CNN checks plotted per layer."""

import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle

from experiments import common
from experiments import gradcheck_matrix as gm

from .helpers import PNG_SIGNATURE


def dense_row(dtype, hidden, depth, manual, fd):
    return {"model": "dense", "dtype": dtype, "hidden": hidden, "output": "softmax",
            "loss": "softmax", "depth": depth, "manual/autodiff": max(manual),
            "fd/autodiff": max(fd),
            "per_layer": {"manual/autodiff": {f"[{i}]": v for i, v in enumerate(manual)},
                          "fd/autodiff": {f"[{i}]": v for i, v in enumerate(fd)}}}


def cnn_row(dtype, name, layers: dict):
    return {"model": "cnn", "dtype": dtype, "hidden": "relu", "output": "softmax",
            "loss": "softmax", "depth": 3, "layers": name, "conv_method": "lax",
            "per_layer": {"manual/autodiff": layers, "fd/autodiff": layers}}


def test_error_grid_keeps_exact_zeros_and_missing_cells_apart():
    rows = [dense_row("float64", "tanh", 1, [0.0], [1e-9]),
            dense_row("float64", "tanh", 2, [3e-15, 0.0], [1e-9, 2e-9])]
    labels = [gm.combo_label(rows[0])]
    by_depth = gm.error_grid(rows, labels, "float64", "manual/autodiff", 3, False)
    assert by_depth.tolist()[0][:2] == [0.0, 3e-15] and np.isnan(by_depth[0, 2])
    per_layer = gm.error_grid(rows, labels, "float64", "manual/autodiff", 2, True)
    assert per_layer.tolist() == [[3e-15, 0.0]]


def test_cnn_grid_orders_layers_conv_first_and_leaves_missing_layers_nan():
    rows = [cnn_row("float32", "one conv", {"['conv'][0]": 1e-6, "['dense'][0]": 0.0,
                                           "['dense'][1]": 2e-7}),
            cnn_row("float32", "two convs", {"['conv'][0]": 1e-6, "['conv'][1]": 3e-6,
                                            "['dense'][0]": 1e-7, "['dense'][1]": 0.0})]
    M, labels, columns = gm.cnn_grid_values(rows, "float32", "manual/autodiff")
    assert columns == ["conv 1", "conv 2", "dense 1", "dense 2"]
    assert labels == ["one conv (lax)\nrelu / softmax+softmax",
                      "two convs (lax)\nrelu / softmax+softmax"]
    assert np.isnan(M[0, 1]) and M[0, 2] == 0.0 and M[1, 1] == 3e-6


def test_draw_grid_marks_tolerance_zeros_and_cells_above_it():
    plt = common.pyplot()
    fig, ax = plt.subplots()
    M = np.array([[1e-12, 0.0, 5e-9], [np.nan, 2e-11, 1e-10]])
    gm.draw_grid(fig, ax, M, 1e-10, ["a", "b"], ["1", "2", "3"], "float64: x", "depth")
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    grey = [p for p in rects if p.get_facecolor() == to_rgba(gm.ZERO_COLOUR)]
    framed = [p for p in rects if not p.get_fill()]
    assert len(grey) == 1 and grey[0].get_xy() == (0.5, -0.5)  # the exact zero at (0, 1)
    assert len(framed) == 1 and framed[0].get_xy() == (1.55, -0.45)  # 5e-9 > 1e-10 only
    assert "0" in [t.get_text() for t in ax.texts] and "–" in [t.get_text() for t in ax.texts]
    bar_ax = fig.axes[1]
    (line,) = [ln for ln in bar_ax.lines if ln.get_color() == "red"]
    assert line.get_ydata()[0] == -10  # the tolerance on the colour bar
    assert "tolerance 1e-10" in ax.get_title()
    plt.close(fig)


def test_heatmaps_plot_the_cnn_checks_too(tmp_path):
    rows = [dense_row(d, "tanh", depth, [1e-7] * depth, [1e-4] * depth)
            for d in ("float32", "float64") for depth in (1, 2)]
    rows += [cnn_row(d, "one conv", {"['conv'][0]": 1e-6, "['dense'][0]": 0.0})
             for d in ("float32", "float64")]
    written = gm.heatmaps(rows, ["float32", "float64"], tmp_path, 2, gm.TOLERANCE)
    assert written == ["heatmap_by_depth.png", "heatmap_per_layer.png", "heatmap_cnn.png"]
    for name in written:
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE)
    (tmp_path / "dense only").mkdir()
    assert gm.heatmaps(rows[:4], ["float32", "float64"], tmp_path / "dense only", 2,
                       gm.TOLERANCE) == ["heatmap_by_depth.png", "heatmap_per_layer.png"]
