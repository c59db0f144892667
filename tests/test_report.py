"""The report page: one section per run, newest first, plots inline, links to each JSON,
incomplete and unreadable runs marked; hostile files neither hang nor inject markup; and,
where Chromium is installed, the page renders in a real browser."""

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from experiments import common, report
from tests.helpers import PNG_SIGNATURE

ROOT = Path(__file__).resolve().parent.parent


class Page(HTMLParser):
    """Sections (with their attributes, text, images and links) of a report page."""

    def __init__(self):
        super().__init__()
        self.sections, self.depth = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append({"attrs": attrs, "text": "", "imgs": [], "links": [],
                                  "tags": []})
        elif self.sections and self.sections[-1].get("open", True):
            s = self.sections[-1]
            s["tags"].append(tag)
            if tag == "img":
                s["imgs"].append(attrs)
            if tag == "a":
                s["links"].append(attrs)

    def handle_endtag(self, tag):
        if tag == "section":
            self.sections[-1]["open"] = False

    def handle_data(self, data):
        if self.sections and self.sections[-1].get("open", True):
            self.sections[-1]["text"] += data


def png(path: Path, color: str) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [0, 1, 4], color=color)
    common.save_figure(fig, path.parent, path.name)


def make_run(runs: Path, experiment: str, name: str, results, when: float, plots=()) -> Path:
    folder = runs / experiment / name
    folder.mkdir(parents=True)
    if results is not None:
        text = results if isinstance(results, str) else json.dumps(results)
        (folder / "results.json").write_text(text)
        os.utime(folder / "results.json", (when, when))
    for filename, color in plots:
        png(folder / filename, color)
    os.utime(folder, (when, when))
    return folder


@pytest.fixture
def runs(tmp_path):
    """Five runs of known ages: complete, incomplete, unparseable, missing, hostile."""
    runs = tmp_path / "runs"
    # one made the way every experiment makes its run: common.run_dir + save_results
    args = argparse.Namespace(runs_dir=str(runs), out="real", overwrite=False, seed=0)
    folder = common.run_dir(args, "vectorization")
    common.save_results(folder, args, {
        "tables": {"µs per example": [{"m": 1, "loop": 31.5, "vmap": 2.25e-4},
                                      {"m": 8, "loop": 30.0, "vmap": 0.0}]},
        "summary": {"largest_m": 8, "forward": {"speedup": 12.5}}})
    png(folder / "time_per_example.png", "red")
    os.utime(folder / "results.json", (5000, 5000))
    make_run(runs, "per_example_gradients", "stopped",
             {"complete": False, "environment": {"jax": "0.0.test", "argv": ["x", "--smoke"]},
              "timing": [{"m": 16, "form": "loop", "seconds": 1.5e-3}]}, 4000,
             [("per_example_gradients.png", "blue")])
    make_run(runs, "mlp_digits", "broken", '{"summary": {', 3000)
    make_run(runs, "mlp_digits", "empty", None, 2000)
    make_run(runs, "no_such_script", "hostile",
             {"summary": {"<b>key</b>": "<script>alert(1)</script>"},
              "environment": {"argv": ["x", "--out", "a b"]}}, 1000)
    return runs


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_one_section_per_run_newest_first_with_plots_and_links(runs, tmp_path):
    out = report.build(runs, tmp_path / "site" / "report.html")
    page = parse(out)
    order = [(s["attrs"]["data-experiment"], s["attrs"]["data-run"]) for s in page.sections]
    assert order == [("vectorization", "real"), ("per_example_gradients", "stopped"),
                     ("mlp_digits", "broken"), ("mlp_digits", "empty"),
                     ("no_such_script", "hostile")]
    real, stopped, broken, empty, hostile = page.sections
    # every plot inline as a PNG data: URI, so the page needs no other file
    for section, name in ((real, "time_per_example.png"),
                          (stopped, "per_example_gradients.png")):
        (img,) = section["imgs"]
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix) and img["alt"] == name
        assert base64.b64decode(img["src"][len(prefix):]).startswith(PNG_SIGNATURE)
    # relative links to each readable results.json, resolving from the page's folder
    for section in (real, stopped, hostile):
        (link,) = [a for a in section["links"] if a.get("class") == "json"]
        href = unquote(link["href"])
        assert not os.path.isabs(href)
        target = (out.parent / href).resolve()
        assert target.name == "results.json" and target.is_file()
    assert not [a for a in broken["links"] + empty["links"] if a.get("class") == "json"]
    # the question from the script's docstring, the table, the machine, the command
    assert "Vectorization: a Python loop over examples" in real["text"]
    assert "Question (the notes:" in real["text"] and "what does it cost" in real["text"]
    assert "µs per example" in real["text"] and "2.250e-04" in real["text"]
    assert "table" in real["tags"] and "31.5" in real["text"]
    assert f"Python {sys.version.split()[0]}" in real["text"]
    assert "python -m experiments.per_example_gradients --smoke" in stopped["text"]
    assert "jax 0.0.test" in stopped["text"]


def test_incomplete_and_unreadable_runs_are_marked(runs, tmp_path):
    page = parse(report.build(runs, tmp_path / "report.html"))
    marked = {s["attrs"]["data-run"]: "incomplete-run" in s["attrs"]["class"]
              for s in page.sections}
    assert marked == {"real": False, "stopped": True, "broken": True, "empty": True,
                      "hostile": False}
    by_run = {s["attrs"]["data-run"]: s["text"] for s in page.sections}
    assert "incomplete" in by_run["stopped"] and "history so far" in by_run["stopped"]
    assert "cannot be read: JSONDecodeError" in by_run["broken"]
    assert "no results.json" in by_run["empty"]


def test_hostile_text_is_escaped_and_a_fifo_is_not_opened(runs, tmp_path):
    os.mkfifo(runs / "mlp_digits" / "empty" / "results.json")  # reading it would hang
    os.mkfifo(runs / "mlp_digits" / "empty" / "pipe.png")
    (runs / "mlp_digits" / "empty" / "fake.png").write_bytes(b"<html>not a png</html>")
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG_SIGNATURE + b"outside runs/")
    (runs / "mlp_digits" / "broken" / "link.png").symlink_to(secret)
    deep = "[" * 100_000 + "]" * 100_000
    (runs / "no_such_script" / "deep").mkdir()
    (runs / "no_such_script" / "deep" / "results.json").write_text(deep)
    out = report.build(runs, tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = parse(out)
    empty = next(s for s in page.sections if s["attrs"]["data-run"] == "empty")
    assert "not a regular file" in empty["text"] and "fake.png: not a PNG" in empty["text"]
    assert "pipe.png: not a regular file" in empty["text"]
    assert not empty["imgs"]
    broken = next(s for s in page.sections if s["attrs"]["data-run"] == "broken")
    assert not broken["imgs"] and "link.png:" in broken["text"]  # links are not followed
    deep = next(s for s in page.sections if s["attrs"]["data-run"] == "deep")
    assert "cannot be read: RecursionError" in deep["text"]
    hostile = next(s for s in page.sections if s["attrs"]["data-run"] == "hostile")
    assert "python -m experiments.no_such_script --out 'a b'" in hostile["text"]
    assert "no script experiments/no_such_script.py" in hostile["text"]


def test_main_writes_runs_report_html_by_default_and_prints_it(runs, capsys):
    assert report.main(["--runs-dir", str(runs)]) == 0
    out = runs / "report.html"
    assert capsys.readouterr().out.strip() == str(out)
    assert len(parse(out).sections) == 5
    # the page itself, inside runs/, is not taken for a run on the next build
    assert report.main(["--runs-dir", str(runs)]) == 0
    assert len(parse(out).sections) == 5


@pytest.mark.parametrize("case", ["missing", "empty", "out is a folder", "unknown flag",
                                  "abbreviation"])
def test_user_errors_are_one_line_and_exit_2(case, runs, tmp_path, capsys):
    argv = {"missing": ["--runs-dir", str(tmp_path / "nope")],
            "empty": ["--runs-dir", str(tmp_path / "blank")],
            "out is a folder": ["--runs-dir", str(runs), "--out", str(tmp_path)],
            "unknown flag": ["--runs-dir", str(runs), "--colour"],
            "abbreviation": ["--runs", str(runs)]}[case]
    (tmp_path / "blank").mkdir()
    try:
        code = report.main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err
    assert "Traceback" not in err


def test_every_flag_has_help_and_one_default():
    proc = subprocess.run([sys.executable, "-m", "experiments.report", "--help"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    text = " ".join(proc.stdout.split())
    assert "--runs-dir RUNS_DIR folder holding the runs" in text
    assert "(default: runs)" in text and "(default: RUNS_DIR/report.html)" in text
    assert text.count("(default:") == 2


def test_number_formats_for_reading():
    assert report.number(28059.47) == "2.806e+04"
    assert report.number(0.0) == "0" and report.number(None) == "—"
    assert report.number(2688.0) == "2688" and report.number(1.5e-15) == "1.500e-15"
    assert report.number(True) == "yes" and report.number(7) == "7"


# ------------------------------------------------------------------- in a real browser

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(b)), None)


def chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
        capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)")
def test_page_renders_in_headless_chromium(runs, tmp_path):
    out = report.build(runs, tmp_path / "report.html").resolve()
    shot = tmp_path / "shot.png"
    proc = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000",
                    out.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    colours = np.unique((pixels[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3),
                        axis=0)
    assert len(colours) > 50, "a blank or single-colour screenshot"
    # the left border of the first section is the page's green; the page is not all white
    assert np.mean(np.all(pixels[..., :3] > 0.98, axis=-1)) < 0.97
    dom = chromium(tmp_path, "--dump-dom", out.as_uri()).stdout
    assert "Vectorization: a Python loop over examples" in dom
    assert dom.count('<section class="run') == 5
    assert dom.count("data:image/png;base64,") == 2
    assert "per_example_gradients / stopped" in dom and ">incomplete<" in dom


def test_long_cells_are_cut_and_tables_without_tables_key_fall_back_to_row_lists():
    assert report.cell({"a": list(range(100)), "b": "x" * 200}).endswith("…")
    assert len(report.cell("y" * 500)) == 80 and report.cell("short") == "short"
    results = {"rows": [{"a": 1, "b": 2.5}], "config": [{"x": 1}], "nested": [{"d": {}}],
               "numbers": [1, 2]}
    assert report.row_tables(results) == {"rows": [{"a": 1, "b": 2.5}]}
    assert report.row_tables({"tables": {"t": [{"a": 1}], "bad": "x"}, "rows": [{"a": 2}]}) == {
        "t": [{"a": 1}]}
