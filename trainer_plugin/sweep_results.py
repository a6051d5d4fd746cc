"""A sweep's results: its trials ranked by the metric (``results``), as a text table, and plotted
(the metric against each parameter) as a self-contained HTML file or, with matplotlib, a PNG.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict

from .sweep_config import metric_name
from .sweepstore import SweepError, SweepStore


def results(store: SweepStore) -> Dict[str, Any]:
    """The trials ranked by the metric (best first), with params, state and attempts."""
    sw = store.sweep()
    cfg = sw["config"]
    metric = metric_name(cfg)
    goal = (cfg.get("metric") or {}).get("goal", "minimize")
    rows = []
    for t in store.trials():
        out = t.outcome() or {}
        rows.append({"trial": t.number, "run_id": t.run_id, "state": t.state(), "attempts": t.attempts,
                     "params": t.params, "metric": out.get("metric"), "train_s": out.get("train_s"),
                     "overhead_s": out.get("overhead_s")})
    sign = -1 if goal == "maximize" else 1
    rows.sort(key=lambda r: (r["metric"] is None, sign * r["metric"] if r["metric"] is not None else 0, r["trial"]))
    for i, r in enumerate(rows):
        r["rank"] = i + 1 if r["metric"] is not None else None
    return {"sweep": sw["id"], "name": sw["name"], "method": cfg["method"], "metric": metric, "goal": goal,
            "trials": rows}


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def results_table(res: Dict[str, Any]) -> str:
    params = sorted({k for r in res["trials"] for k in r["params"]})
    head = ["rank", "trial", "state", res["metric"] or "metric", *params, "run id"]
    body = [[_fmt(r["rank"] or "-"), str(r["trial"]), r["state"] + (f" ({r['attempts']} attempts)" if r["attempts"] > 1 else ""),
             _fmt(r["metric"]) if r["metric"] is not None else "-",
             *[_fmt(r["params"].get(p, "")) for p in params], r["run_id"]] for r in res["trials"]]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = [f"sweep {res['name']} ({res['method']}, {res['goal']} {res['metric'] or '-'}): {len(body)} trials"]
    for row in [head, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def plot_html(res: Dict[str, Any]) -> str:
    """One self-contained HTML file: the metric against each parameter (inline SVG, no scripts)."""
    import html

    pts = [r for r in res["trials"] if r["metric"] is not None]
    params = sorted({k for r in res["trials"] for k in r["params"]})
    W, H, P = 320, 220, 40
    panels = []
    for p in params:
        xs = [r["params"].get(p) for r in pts]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs) and xs
        cats = sorted({json.dumps(x) for x in xs}) if not numeric else []
        ys = [r["metric"] for r in pts]
        ylo, yhi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        log = bool(numeric) and min(xs) > 0 and max(xs) / min(xs) > 50
        tx = (lambda v: math.log10(v)) if log else (lambda v: float(v))
        if numeric:
            xlo, xhi = tx(min(xs)), tx(max(xs))
        def X(x: Any) -> float:
            if not numeric:
                return P + (cats.index(json.dumps(x)) + 0.5) * (W - P - 10) / max(1, len(cats))
            return P + (tx(x) - xlo) / ((xhi - xlo) or 1) * (W - P - 10) if xhi != xlo else (P + W - 10) / 2
        def Y(y: float) -> float:
            return H - P + 10 - (y - ylo) / ((yhi - ylo) or 1) * (H - P - 10) if yhi != ylo else H / 2
        dots = "".join(f'<circle cx="{X(r["params"].get(p)):.1f}" cy="{Y(r["metric"]):.1f}" r="4" fill="#1f77b4">'
                       f'<title>trial {r["trial"]}: {html.escape(p)}={html.escape(_fmt(r["params"].get(p)))}, '
                       f'{html.escape(str(res["metric"]))}={r["metric"]:.6g}</title></circle>' for r in pts)
        xl = (f"{_fmt(min(xs))} … {_fmt(max(xs))}" + (" (log)" if log else "")) if numeric else " · ".join(html.escape(c) for c in cats)
        panels.append(
            f'<figure><svg width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg">'
            f'<rect x="{P}" y="10" width="{W - P - 10}" height="{H - P}" fill="none" stroke="#999"/>{dots}'
            f'<text x="{P}" y="{H - 12}" font-size="11">{xl}</text>'
            f'<text x="2" y="20" font-size="11">{_fmt(yhi)}</text><text x="2" y="{H - P + 10}" font-size="11">{_fmt(ylo)}</text>'
            f'</svg><figcaption>{html.escape(str(res["metric"]))} against <b>{html.escape(p)}</b></figcaption></figure>')
    table = html.escape(results_table(res))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>sweep "
            f"{html.escape(res['name'])}</title><style>figure{{display:inline-block;margin:8px}}</style></head>"
            f"<body><h1>sweep {html.escape(res['name'])}</h1><p>{html.escape(res['method'])}, {html.escape(res['goal'])} "
            f"{html.escape(str(res['metric']))}; {len(pts)} of {len(res['trials'])} trials with a value</p>"
            f"{''.join(panels)}<pre>{table}</pre></body></html>\n")


def plot_png(res: Dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SweepError("a PNG plot needs matplotlib (pip install matplotlib); "
                         "or write --plot FILE.html, which needs nothing") from None
    pts = [r for r in res["trials"] if r["metric"] is not None]
    params = sorted({k for r in res["trials"] for k in r["params"]})
    fig, axes = plt.subplots(1, max(1, len(params)), figsize=(4 * max(1, len(params)), 3.2), squeeze=False)
    for ax, p in zip(axes[0], params):
        xs = [r["params"].get(p) for r in pts]
        if xs and not all(isinstance(x, (int, float)) for x in xs):
            xs = [str(x) for x in xs]
        ax.scatter(xs, [r["metric"] for r in pts])
        ax.set_xlabel(p)
        ax.set_ylabel(str(res["metric"]))
    fig.tight_layout()
    fig.savefig(str(path))
