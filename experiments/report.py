"""One HTML page over every run: its question, tables, plots, machine and versions.

``python -m experiments.report`` reads ``runs/<experiment>/<run>/results.json`` and the
PNG plots beside it and writes ``runs/report.html``: one section per run, newest first
(by the time results.json was last written), each with the experiment's question (the
first paragraph of its script's docstring and its "Question" paragraph), the tables
the run saved (``"tables"`` in results.json, else its list-of-rows entries), its
``"summary"``, its plots embedded as data: URIs (the page needs no other file), the
machine and versions it ran on (``"environment"``), the command that made it, and a
relative link to its results.json. A run whose results.json says ``"complete": false``
(stopped before the end), or that has no readable results.json, is shown marked.

Every file under runs/ is read as untrusted: sizes are checked before reading, only
regular files are opened (no FIFOs, no links), JSON that does not parse is reported in
its section, and all text is HTML-escaped.
"""

import argparse
import ast
import base64
import datetime
import html
import json
import math
import os
import re
import shlex
import stat
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parent
MAX_JSON_BYTES = 64 * 2**20
MAX_PNG_BYTES = 16 * 2**20
MAX_TABLE_ROWS = 60
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Run:
    """One run folder: what the page shows of it."""

    experiment: str
    name: str
    folder: Path
    time: float  # seconds since the epoch: when results.json (else the folder) last changed
    results: dict | None = None
    problem: str | None = None  # why results.json could not be used
    plots: list[tuple[str, bytes]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files left out, with the reason

    @property
    def complete(self) -> bool:
        """A missing "complete" key means complete; no readable results.json means not."""
        return self.results is not None and self.results.get("complete", True) is not False


# ----------------------------------------------------------------------------- reading


def regular_file(path: Path) -> os.stat_result | None:
    """The stat of path when it is a regular file and not a link; else None."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; OSError or ValueError else.

    Opened without following a link and without blocking (a FIFO put in its place after
    the check would otherwise hang the read), then checked again on the open file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > limit:
            raise ValueError(f"{st.st_size} bytes, over the {limit} read")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"over {limit} bytes")
    return data


def read_results(path: Path) -> tuple[dict | None, str | None]:
    """(results, None), or (None, why not) for a missing, oversized or malformed file."""
    if regular_file(path) is None:
        return None, "no results.json (the run stopped before writing it)" if not (
            path.exists() or path.is_symlink()) else "results.json is not a regular file"
    try:
        data = json.loads(read_regular(path, MAX_JSON_BYTES))
    except (OSError, ValueError, RecursionError) as e:
        return None, f"results.json cannot be read: {type(e).__name__}: {e}"
    if not isinstance(data, dict):
        return None, f"results.json holds a {type(data).__name__}, not an object"
    return data, None


def read_plots(folder: Path) -> tuple[list[tuple[str, bytes]], list[str]]:
    """([(file name, PNG bytes)] sorted by name, [files left out, with why])."""
    plots, skipped = [], []
    for path in sorted(folder.glob("*.png")):
        try:
            data = read_regular(path, MAX_PNG_BYTES)
        except (OSError, ValueError) as e:
            skipped.append(f"{path.name}: {e}")
            continue
        if data.startswith(PNG_SIGNATURE):
            plots.append((path.name, data))
        else:
            skipped.append(f"{path.name}: not a PNG")
    return plots, skipped


def find_runs(runs: Path) -> list[Run]:
    """Every runs/<experiment>/<run>/ folder, newest first."""
    found = []
    for experiment in sorted(p for p in runs.iterdir() if p.is_dir() and not p.is_symlink()):
        for folder in sorted(p for p in experiment.iterdir()
                             if p.is_dir() and not p.is_symlink()):
            results_path = folder / "results.json"
            st = regular_file(results_path)
            run = Run(experiment.name, folder.name, folder,
                      (st or folder.stat()).st_mtime)
            run.results, run.problem = read_results(results_path)
            run.plots, run.skipped = read_plots(folder)
            found.append(run)
    return sorted(found, key=lambda r: (r.time, r.experiment, r.name), reverse=True)


def question(experiment: str) -> tuple[str, list[str]]:
    """(first paragraph, the "Question" paragraphs) of experiments/<experiment>.py's
    docstring, read without importing the script; ("", []) when there is none.

    The question runs from the paragraph that starts with "Question" to the first that
    ends with "?" (at most four); indented paragraphs (formulas) keep their lines.
    """
    path = EXPERIMENTS / f"{experiment}.py"
    if not experiment.isidentifier() or regular_file(path) is None:
        return "", []
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError, ValueError):
        return "", []
    raw = [p for p in doc.split("\n\n") if p.strip()]
    first = " ".join(raw[0].split()) if raw else ""
    start = next((i for i, p in enumerate(raw) if i > 0 and p.startswith("Question")), None)
    if start is None:
        return first, []
    asked = []
    for p in raw[start:start + 4]:
        asked.append(p.strip("\n") if p.startswith(" ") else " ".join(p.split()))
        if p.rstrip().endswith("?"):
            break
    return first, asked


# -------------------------------------------------------------------------- formatting


def number(v, depth: int = 0) -> str:
    """A cell for reading: 4 significant figures, exact zero as 0, ints whole, null as —;
    lists and dicts shortened (two levels at most)."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        if not math.isfinite(v):
            return str(v)
        if 1e-3 <= abs(v) < 1e6:
            return f"{v:.4g}"
        return f"{v:.3e}"
    if isinstance(v, (list, dict)) and depth >= 2:
        return "[…]" if isinstance(v, list) else "{…}"
    if isinstance(v, list):
        if len(v) > 8:
            return ("[" + ", ".join(number(x, depth + 1) for x in v[:3])
                    + f", … ({len(v)} values)]")
        return "[" + ", ".join(number(x, depth + 1) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {number(x, depth + 1)}" for k, x in list(v.items())[:8]) + (
            ", …}" if len(v) > 8 else "}")
    return str(v)


def is_scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def row_tables(results: dict) -> dict[str, list[dict]]:
    """The tables of a run: results["tables"] ({title: [row dicts]}) when it has them,
    else every top-level list of dicts whose values are mostly scalars."""
    tables = results.get("tables")
    if isinstance(tables, dict):
        return {str(k): v for k, v in tables.items()
                if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)}
    found = {}
    for key, value in results.items():
        if key in ("config", "environment") or not isinstance(value, list) or not value:
            continue
        if all(isinstance(r, dict) for r in value):
            cells = [x for r in value for x in r.values()]
            if cells and sum(map(is_scalar, cells)) >= len(cells) / 2:
                found[str(key)] = value
    return found


def flatten(d: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, object]]:
    """[(a / b / c, value)] for the leaves of nested dicts, four levels deep at most (lists
    and deeper dicts stay values)."""
    out = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v and depth < 4:
            out += flatten(v, f"{name} / ", depth + 1)
        else:
            out.append((name, v))
    return out


def esc(s) -> str:
    return html.escape(str(s), quote=True)


def prose(s: str) -> str:
    """Docstring text as HTML: escaped, ``literals`` as <code>."""
    return re.sub(r"``(.+?)``", r"<code>\1</code>", esc(s))


def cell(v, width: int = 80) -> str:
    """number(v), cut to ``width`` characters (the whole value is in results.json)."""
    text = number(v)
    return text if len(text) <= width else text[: width - 1] + "…"


def html_table(rows: list[dict], caption: str) -> str:
    columns = list(dict.fromkeys(k for r in rows[:MAX_TABLE_ROWS] for k in r))
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(cell(r.get(c, '')))}</td>" for c in columns) + "</tr>"
        for r in rows[:MAX_TABLE_ROWS])
    more = (f"<p class=note>{len(rows) - MAX_TABLE_ROWS} more rows in results.json</p>"
            if len(rows) > MAX_TABLE_ROWS else "")
    return (f"<table><caption>{esc(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{more}")


def command(experiment: str, environment: dict) -> str:
    """The command line that made the run, from the argv it recorded."""
    argv = environment.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return ""
    return shlex.join(["python", "-m", f"experiments.{experiment}", *argv[1:]])


def machine(environment: dict) -> str:
    """One line: device, backend, CPUs, machine, jax and Python versions, x64."""
    e = environment
    parts = [f"{e.get('device_kind', '?')} ({e.get('backend', '?')}, "
             f"{len(e['devices']) if isinstance(e.get('devices'), list) else '?'} device(s))",
             f"{e.get('cpu_count', '?')} CPUs, {e.get('machine', '?')}",
             f"jax {e.get('jax', '?')}", f"Python {e.get('python', '?')}",
             "x64 on" if e.get("x64") else "x64 off"]
    return "; ".join(parts)


def section(run: Run, index: int, page_folder: Path) -> str:
    """The <section> of one run."""
    first, asked = question(run.experiment)
    when = datetime.datetime.fromtimestamp(run.time).strftime("%Y-%m-%d %H:%M:%S")
    mark = "" if run.complete else " <span class=incomplete>incomplete</span>"
    parts = [f'<section class="run{"" if run.complete else " incomplete-run"}" '
             f'id="run-{index}" data-experiment="{esc(run.experiment)}" '
             f'data-run="{esc(run.name)}">',
             f"<h2>{esc(run.experiment)} / {esc(run.name)}{mark}</h2>",
             f"<p class=when>{esc(when)}</p>"]
    if first:
        parts.append(f"<p class=title>{prose(first)}</p>")
    for paragraph in asked:
        tag = "pre" if paragraph.startswith(" ") else "p"
        parts.append(f"<{tag} class=question>{prose(paragraph)}</{tag}>")
    if not first and not asked:
        parts.append(f"<p class=note>(no script experiments/{esc(run.experiment)}.py "
                     "with a docstring)</p>")
    json_path = run.folder / "results.json"
    if run.results is None:
        parts.append(f"<p class=problem>{esc(run.problem)}</p>")
    else:
        link = urllib.parse.quote(Path(os.path.relpath(json_path, page_folder)).as_posix())
        parts.append(f'<p><a class=json href="{esc(link)}">results.json</a></p>')
        if not run.complete:
            parts.append("<p class=problem>The run stopped before the end: the figures "
                         "below are the history so far.</p>")
        environment = run.results.get("environment")
        if isinstance(environment, dict):
            parts.append(f"<p class=machine>{esc(machine(environment))}</p>")
            cmd = command(run.experiment, environment)
            if cmd:
                parts.append(f"<pre class=command>{esc(cmd)}</pre>")
        for title, rows in row_tables(run.results).items():
            parts.append(html_table(rows, title))
        summary = run.results.get("summary")
        if isinstance(summary, dict) and summary:
            parts.append(html_table([{"quantity": k, "value": v} for k, v in flatten(summary)],
                                    "summary"))
        config = run.results.get("config")
        if isinstance(config, dict):
            parts.append("<details><summary>configuration</summary>"
                         + html_table([{"option": k, "value": v} for k, v in config.items()],
                                      "configuration") + "</details>")
    for name, data in run.plots:
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(f'<figure><img src="{uri}" alt="{esc(name)}">'
                     f"<figcaption>{esc(name)}</figcaption></figure>")
    if run.skipped:
        parts.append("<p class=note>left out: " + esc("; ".join(run.skipped)) + "</p>")
    parts.append("</section>")
    return "\n".join(parts)


STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 1em auto; padding: 0 1em;
       color: #222; background: #fff; }
h1 { border-bottom: 3px solid #2a6; }
section.run { border: 1px solid #ccc; border-left: 6px solid #2a6; margin: 1.5em 0;
              padding: 0.5em 1em; overflow-x: auto; }
section.incomplete-run { border-left-color: #d80; background: #fff8ee; }
.incomplete { background: #d80; color: #fff; padding: 0 0.4em; font-size: 0.7em;
              border-radius: 3px; vertical-align: middle; }
.title { font-weight: bold; } .question { font-style: italic; }
.when, .machine, .note { color: #555; font-size: 0.9em; } .problem { color: #b30; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.85em; }
caption { text-align: left; font-weight: bold; padding: 0.2em 0; }
th, td { border: 1px solid #ddd; padding: 0.15em 0.5em; text-align: left; }
th { background: #eef6f0; } tbody tr:nth-child(even) { background: #f7f7f7; }
pre.command { background: #f2f2f2; padding: 0.4em; overflow-x: auto; }
figure { margin: 0.8em 0; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85em; }
nav li.incomplete-run a { color: #b60; }
"""


def page(runs: list[Run], runs_folder: Path, page_folder: Path) -> str:
    """The whole HTML document."""
    items = "".join(
        f'<li class="{"" if r.complete else "incomplete-run"}"><a href="#run-{i}">'
        f"{esc(r.experiment)} / {esc(r.name)}</a>{'' if r.complete else ' (incomplete)'}</li>"
        for i, r in enumerate(runs))
    made = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    incomplete = sum(not r.complete for r in runs)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>jaxnn runs: {len(runs)}</title><style>{STYLE}</style></head><body>",
        f"<h1>jaxnn runs under {esc(runs_folder)}</h1>",
        f"<p class=note>{len(runs)} runs, newest first"
        + (f", {incomplete} incomplete" if incomplete else "") + f"; page made {made}.</p>",
        f"<nav><ol>{items}</ol></nav>",
        *(section(r, i, page_folder) for i, r in enumerate(runs)),
        "</body></html>", ""])


def build(runs: Path, out: Path) -> Path:
    """Write the report page over the runs folder ``runs`` to ``out``; returns ``out``.

    ValueError when runs is not a folder or holds no run, or out is a folder.
    """
    from jaxnn.checkpoint import write_atomic

    runs, out = Path(runs), Path(out)
    if not runs.is_dir():
        raise ValueError(f"runs folder {runs} does not exist (or is not a folder)")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the path of the HTML file")
    found = find_runs(runs)
    if not found:
        raise ValueError(f"no runs under {runs} (expected {runs}/<experiment>/<run>/); "
                         "run an experiment first, e.g. python -m experiments.tour")
    out.parent.mkdir(parents=True, exist_ok=True)
    text = page(found, runs, out.resolve().parent)
    write_atomic(out, lambda f: f.write(text.encode("utf-8")))
    out.chmod(0o644)  # a page to share, not a private temporary file
    return out


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (and exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv=None) -> int:
    p = OneLineParser(
        prog="python -m experiments.report", allow_abbrev=False,
        description=__doc__.split("\n\n")[0],
        epilog="Writes one file, the page (--out); reads runs/ and the scripts' docstrings.")
    p.add_argument("--runs-dir", default="runs",
                   help="folder holding the runs, as <experiment>/<run>/ (default: %(default)s)")
    p.add_argument("--out", default=None,
                   help="path of the HTML page to write (default: RUNS_DIR/report.html)")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out is not None else Path(args.runs_dir) / "report.html"
    try:
        path = build(Path(args.runs_dir), out)
    except (ValueError, OSError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
