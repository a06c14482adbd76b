"""One self-contained HTML page: escaping, inline SVG figures, tables, the document around them.

Every string that comes from a run (names, paths, class names, config values, a metrics file
someone edited) reaches the page through `text` (HTML-escaped) or `script_json` (JSON that
cannot end its <script> element); matplotlib escapes the text it writes into an SVG, and
`figure_svg` keeps only the <svg> element, with no comments, metadata or document type. The page
fetches nothing: no fonts, scripts or images from anywhere, so it opens from disk or a mail.
"""

from __future__ import annotations

import html
import io
import itertools
import json
import math
import re
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

_figure_numbers = itertools.count(1)  # each inline SVG's ids get a prefix of their own


def text(value: Any) -> str:
    """Any value as HTML text (quotes too, so it is safe in an attribute)."""
    return html.escape("" if value is None else str(value), quote=True)


def finite(value: Any) -> Any:
    """`value` with NaN and infinities (which JSON cannot hold) as None, in lists and dicts too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def script_json(data: Any) -> str:
    """JSON for a <script type="application/json"> element: `<`, `>` and `&` are written as
    \\u003c, \\u003e, \\u0026 (the same string to JSON.parse), so no `</script>` or `<!--` in a
    value can end or change the element; U+2028/2029 likewise."""
    encoded = json.dumps(finite(data), ensure_ascii=False, allow_nan=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        encoded = encoded.replace(char, escape)
    return encoded


def _clean_svg(svg: str) -> str:
    """The <svg> element of an SVG file, without comments or metadata, its ids made unique on
    the page (several figures each have a "figure_1"), sized by the page's CSS."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    prefix = f"f{next(_figure_numbers)}-"
    svg = re.sub(r'\bid="', f'id="{prefix}', svg)
    svg = svg.replace("url(#", f"url(#{prefix}").replace('href="#', f'href="#{prefix}')
    return svg.replace("<svg ", '<svg class="figure" role="img" ', 1)


@contextmanager
def _svg_settings() -> Iterator[None]:
    from matplotlib import rc_context

    # text as <text> (escaped by matplotlib, selectable, small) rather than glyph paths
    with rc_context({"svg.fonttype": "none"}), warnings.catch_warnings():
        # a study's panel before its first test evaluation has no labelled line: not news
        warnings.filterwarnings("ignore", message="No artists with labels found")
        yield


def figure_svg(figure) -> str:
    """A matplotlib Figure as inline SVG."""
    buffer = io.BytesIO()
    with _svg_settings():
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return _clean_svg(buffer.getvalue().decode("utf-8"))


@contextmanager
def svg_folder() -> Iterator[Path]:
    """A temporary folder for drawing functions that write files, with SVG text settings;
    read what they wrote there with `read_svg`."""
    with tempfile.TemporaryDirectory() as folder, _svg_settings():
        yield Path(folder)


def read_svg(path: str | Path) -> str:
    return _clean_svg(Path(path).read_text(encoding="utf-8"))


def drawn_svg(draw: Callable[..., Any], *args: Any) -> str:
    """Inline SVG of a figure the project's own drawing function writes to a file,
    `draw(*args, path)` (study.plots.plot_figure6 and its kin), drawn in a temporary folder."""
    with svg_folder() as folder:
        return read_svg(draw(*args, folder / "figure.svg"))


def figure_block(svg: str, caption: str) -> str:
    return f'<figure>{svg}<figcaption>{text(caption)}</figcaption></figure>'


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]], *, numeric_from: int = 1,
          sortable: bool = True) -> str:
    """An HTML table of escaped cells; columns from `numeric_from` on are right-aligned."""
    def cells(values, tag):
        return "".join(f'<{tag}{" class=num" if i >= numeric_from else ""}>{text(v)}</{tag}>'
                       for i, v in enumerate(values))

    body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
    sort = ' class="sortable"' if sortable else ""
    return f"<table{sort}><thead><tr>{cells(header, 'th')}</tr></thead><tbody>{body}</tbody></table>"


def definitions(pairs: Iterable[tuple[Any, Any]]) -> str:
    """Label: value pairs as a two-column table."""
    rows = "".join(f"<tr><th>{text(k)}</th><td>{text(v)}</td></tr>" for k, v in pairs)
    return f'<table class="pairs"><tbody>{rows}</tbody></table>'


def section(title: str, body: str, *, level: int = 2, anchor: str | None = None) -> str:
    ident = f' id="{text(anchor)}"' if anchor else ""
    return f"<section{ident}><h{level}>{text(title)}</h{level}>{body}</section>"


def paragraph(value: str, css: str | None = None) -> str:
    return f'<p{f" class={css}" if css else ""}>{text(value)}</p>'


_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;
padding:1em 1.5em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{margin-top:1.4em}table{border-collapse:collapse;margin:.6em 0}
th,td{padding:.25em .7em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.pairs th{font-weight:600;white-space:nowrap}
table.sortable thead th{cursor:pointer}
figure{margin:1em 0}svg.figure{max-width:100%;height:auto;display:block}
figcaption{color:#555;font-size:.9em}.verdict{font-size:1.15em;background:#f4f7fb;padding:.6em .9em;
border-left:4px solid #4a78b0}.note{color:#666}.status{background:#fff6dd;padding:.4em .8em}
code,pre{font-family:ui-monospace,monospace;font-size:.9em}pre{background:#f6f6f6;padding:.6em;overflow:auto}
"""

# Tables sort by a click on a column's header (numbers as numbers); nothing else runs.
_SCRIPT = """
(function () {
  function value(cell) {
    var t = cell.textContent.trim(), n = parseFloat(t.replace(/,/g, ''));
    return isNaN(n) ? t.toLowerCase() : n;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('thead th').forEach(function (header, column) {
      header.addEventListener('click', function () {
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var up = header.getAttribute('data-order') !== 'up';
        header.setAttribute('data-order', up ? 'up' : 'down');
        rows.sort(function (a, b) {
          var x = value(a.cells[column]), y = value(b.cells[column]);
          return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
})();
"""


def document(title: str, body: str, *, data: dict, reload_s: int | None = None) -> str:
    """The whole page. `data` (plain JSON) is embedded for scripts and readers;
    `reload_s`: the page reloads itself every so many seconds (a study still training)."""
    refresh = f'<meta http-equiv="refresh" content="{int(reload_s)}">' if reload_s else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{refresh}"
        f"<title>{text(title)}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n"
        f'<script type="application/json" id="resnets-data">{script_json(data)}</script>\n'
        f"<script>{_SCRIPT}</script>\n</body></html>\n"
    )
