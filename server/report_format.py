"""How the report writes numbers and HTML: values with their 95% CIs, the
cut-off, embedded PNGs, figures and tables."""

from __future__ import annotations

import base64
import html

import numpy as np


def fmt_num(value, digits: int = 3) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def fmt_pct(value) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{100 * value:.0f}%"


def fmt_ci(pair, fmt=fmt_num) -> str:
    if not pair or any(v is None or not np.isfinite(v) for v in pair):
        return ""
    return f"({fmt(pair[0])}–{fmt(pair[1])})"


def with_ci(m: dict, key: str, fmt=fmt_num) -> str:
    value = m.get(key)
    text = fmt(value)
    ci = fmt_ci(m.get(f"{key}_ci"), fmt)
    return f"{text} {ci}".strip()


def threshold_text(threshold: float, short: bool = False) -> str:
    """The cut-off; +inf means Youden's J found nothing better than "all negative"."""
    if threshold is None or np.isnan(threshold):
        return "undefined"
    if np.isinf(threshold):
        return (
            "∞"
            if short
            else ("∞ (no cut-off beat calling every case negative on validation)")
        )
    return f"{threshold:.3f}"


def html_img(png: bytes, alt: str, css_class: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    klass = f' class="{css_class}"' if css_class else ""
    return f'<img{klass} alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def html_figure(png: bytes, alt: str, caption: str, css_class: str = "") -> str:
    return (
        f"<figure>{html_img(png, alt, css_class)}"
        f"<figcaption>{caption}</figcaption></figure>"
    )


def html_table(header: list[str], rows: list[list[str]], row_class=None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        klass = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        cells = "".join(f"<td>{html.escape(str(c), quote=False)}</td>" for c in row)
        body.append(f"<tr{klass}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"
