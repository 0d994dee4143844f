#!/usr/bin/env python3
"""Draws a picture of the Rookery Grafana dashboard with real data, for the docs.

THIS IS NOT A GRAFANA SCREENSHOT. It is our own rendering of the dashboard's queries: the script
reads monitoring/grafana/rookery-overview.json, runs every panel's PromQL with Prometheus's
`/api/v1/query_range` over the time range you give, and draws the dashboard's grid with matplotlib
(panel titles and the gridPos layout; time series as lines, stat panels as their last value,
the heatmap as a bucket-by-time image). Colours, fonts, legends and unit formatting imitate
Grafana's dark theme loosely. Grafana itself is not installable on our machines (Debian 12 ships
no grafana package, and the `grafana` name on PyPI is an empty placeholder), so this is how the
docs show the dashboard with data.

    python3 monitoring/render_dashboard.py --prometheus http://127.0.0.1:9090 --last 15m \
        --output docs/img/dashboard.png

Grafana's variables are filled in like this: `$job` is --job (default: the first job that has
rookery_build_info), `$instance` is --instance (a regex, default `.+`, Grafana's "All"),
`$__rate_interval` is --rate-interval (default: Grafana's formula max(4 x scrape interval,
step + scrape interval) with --scrape-interval), `$__interval` is the step.

Exit status: 0 when the PNG is written and every query succeeded; 1 when a query failed (the PNG
is still written, with the error in the panel); 2 for bad arguments or no Prometheus.
Needs matplotlib (tests/interop/requirements.txt has it); standard library otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DASHBOARD = HERE / "grafana" / "rookery-overview.json"
DEFAULT_OUTPUT = HERE.parent / "docs" / "img" / "dashboard.png"

# Grafana's dark theme, roughly.
BG = "#111217"
PANEL_BG = "#181b1f"
PANEL_EDGE = "#2c3235"
TEXT = "#ccccdc"
DIM = "#8e8e9b"
GRID = "#2c3235"
PALETTE = [
    "#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C",
    "#5794F2", "#B877D9", "#705DA0", "#37872D", "#FADE2A",
]
NAMED_COLORS = {
    "green": "#73BF69", "red": "#F2495C", "yellow": "#FADE2A", "orange": "#FF9830",
    "blue": "#5794F2", "purple": "#B877D9", "text": TEXT,
}

GRID_COLUMNS = 24
ROW_UNIT_PX = 34  # one gridPos height unit (Grafana: 30 px + 8 px margin)


# -- time and durations -------------------------------------------------------------------------

DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90s', '15m', '1h30m' -> seconds."""
    pos, total = 0, 0.0
    for m in DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 15m, 1h)")
    return total


def prom_duration(seconds: float) -> str:
    """Seconds -> a PromQL duration ('15s', '1500ms')."""
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def parse_time(text: str, now: float) -> float:
    """'now', 'now-15m', unix seconds, or an ISO 8601 time -> unix seconds."""
    text = text.strip()
    if text == "now":
        return now
    if text.startswith("now-"):
        return now - parse_duration(text[4:])
    try:
        return float(text)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


# -- Prometheus ---------------------------------------------------------------------------------


class PromError(Exception):
    pass


class Prometheus:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def get(self, path: str, **params: str | list[str]) -> object:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=self.timeout) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            try:
                body = json.load(e)
            except (ValueError, OSError):
                raise PromError(f"HTTP {e.code} from {path}") from None
        except (urllib.error.URLError, OSError) as e:
            raise PromError(f"cannot reach Prometheus at {self.url}: {e}") from None
        if body.get("status") != "success":
            raise PromError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        data = self.get(
            "/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
            step=prom_duration(step),
        )
        assert isinstance(data, dict)
        if data.get("resultType") != "matrix":
            raise PromError(f"unexpected result type {data.get('resultType')}")
        return data["result"]

    def label_values(self, label: str, match: str) -> list[str]:
        data = self.get(f"/api/v1/label/{label}/values", **{"match[]": [match]})
        assert isinstance(data, list)
        return data


# -- dashboard variables --------------------------------------------------------------------------


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replaces Grafana's `$name` and `${name}` for the given variables (longest name first)."""
    for name in sorted(variables, key=len, reverse=True):
        value = variables[name]
        expr = expr.replace("${" + name + "}", value)
        expr = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", lambda _m: value, expr)
    return expr


def legend(fmt: str, labels: dict[str, str]) -> str:
    if fmt:
        return re.sub(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}",
                      lambda m: labels.get(m.group(1), ""), fmt)
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}" if rest or not name else name


# -- units ----------------------------------------------------------------------------------------


def _scaled(v: float, steps: list[tuple[float, str]], digits: int = 3) -> str:
    for factor, suffix in steps:
        if abs(v) >= factor:
            return f"{v / factor:.{digits}g}{suffix}"
    return f"{v:.{digits}g}"


def fmt_value(v: float | None, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "No data"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    si = [(1e12, " T"), (1e9, " B"), (1e6, " M"), (1e3, " K")]
    if unit == "percentunit":
        return f"{v * 100:.3g}%"
    if unit == "percent":
        return f"{v:.3g}%"
    if unit in ("bytes", "decbytes"):
        iec = [(2**40, " TiB"), (2**30, " GiB"), (2**20, " MiB"), (2**10, " KiB")]
        return _scaled(v, iec) + ("" if abs(v) >= 1024 else " B")
    if unit == "Bps":
        sib = [(1e9, " GB/s"), (1e6, " MB/s"), (1e3, " kB/s")]
        return _scaled(v, sib) + ("" if abs(v) >= 1e3 else " B/s")
    if unit == "s":
        a = abs(v)
        if a == 0:
            return "0 s"
        if a < 1e-3:
            return f"{v * 1e6:.3g} µs"
        if a < 1:
            return f"{v * 1e3:.3g} ms"
        if a < 60:
            return f"{v:.3g} s"
        if a < 3600:
            return f"{v / 60:.3g} min"
        if a < 86400:
            return f"{v / 3600:.3g} hour"
        return f"{v / 86400:.3g} day"
    suffix = {"reqps": " req/s", "ops": " ops/s"}.get(unit, "")
    return _scaled(v, si) + suffix


# -- panels -------------------------------------------------------------------------------------


@dataclass
class Series:
    name: str
    labels: dict[str, str]
    t: list[float]
    v: list[float]


@dataclass
class PanelData:
    series: list[Series] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def fetch(prom: Prometheus, panel: dict, variables: dict[str, str], start: float, end: float,
          step: float) -> PanelData:
    out = PanelData()
    for target in panel.get("targets", []):
        if target.get("hide"):
            continue
        expr = substitute(target["expr"], variables)
        try:
            result = prom.query_range(expr, start, end, step)
        except PromError as e:
            out.errors.append(f"{target.get('refId', '?')}: {e}")
            continue
        for r in result:
            t = [float(p[0]) for p in r["values"]]
            v = [float(p[1]) for p in r["values"]]
            out.series.append(Series(legend(target.get("legendFormat", ""), r["metric"]),
                                     r["metric"], t, v))
    return out


def style_axes(ax) -> None:
    ax.set_facecolor(PANEL_BG)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.tick_params(colors=DIM, labelsize=7, length=0)
    ax.grid(True, color=GRID, linewidth=0.6)


def time_axis(ax, start: float, end: float) -> None:
    import matplotlib.dates as mdates

    ax.set_xlim(datetime.fromtimestamp(start, timezone.utc), datetime.fromtimestamp(end, timezone.utc))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=6, tz=timezone.utc))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S" if end - start < 1800 else "%H:%M",
                                                      tz=timezone.utc))


def no_data(ax, text: str = "No data") -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color=DIM,
            fontsize=10, wrap=True)


def draw_timeseries(ax, panel: dict, data: PanelData, start: float, end: float) -> None:
    from matplotlib.ticker import FuncFormatter

    style_axes(ax)
    time_axis(ax, start, end)
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit", "short")
    custom = defaults.get("custom", {})
    fill = float(custom.get("fillOpacity", 0)) / 100.0
    stacked = custom.get("stacking", {}).get("mode", "none") != "none"
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: fmt_value(v, unit)))
    if not data.series:
        no_data(ax, "\n".join(data.errors) if data.errors else "No data")
        return
    base: dict[float, float] = {}
    for i, s in enumerate(data.series):
        color = PALETTE[i % len(PALETTE)]
        ts = [datetime.fromtimestamp(x, timezone.utc) for x in s.t]
        if stacked:
            low = [base.get(x, 0.0) for x in s.t]
            high = [lo + (0.0 if math.isnan(v) else v) for lo, v in zip(low, s.v)]
            for x, h in zip(s.t, high):
                base[x] = h
            ax.plot(ts, high, color=color, linewidth=1.1, label=s.name)
            ax.fill_between(ts, low, high, color=color, alpha=max(fill, 0.1), linewidth=0)
        else:
            ax.plot(ts, s.v, color=color, linewidth=1.1, label=s.name)
            if fill > 0:
                ax.fill_between(ts, 0, s.v, color=color, alpha=fill, linewidth=0)
    lo = defaults.get("min")
    hi = defaults.get("max")
    if lo is not None:
        ax.set_ylim(bottom=lo)
    if hi is not None:
        ymax = max((v for s in data.series for v in s.v if not math.isnan(v)), default=hi)
        ax.set_ylim(top=max(hi, ymax) * 1.05)
    if lo is not None and ax.get_ylim()[1] <= lo:
        ax.set_ylim(lo, lo + 1)
    handles, labels = ax.get_legend_handles_labels()
    shown = 6
    extra = len(labels) - shown
    leg = ax.legend(handles[:shown], [lb[:40] for lb in labels[:shown]], loc="upper left",
                    bbox_to_anchor=(0, -0.08), ncol=min(3, max(1, len(labels[:shown]))),
                    fontsize=6.5, frameon=False, labelcolor=TEXT, handlelength=1.2,
                    columnspacing=1.0, borderaxespad=0)
    if extra > 0:
        leg.set_title(f"(+{extra} more)", prop={"size": 6})
        leg.get_title().set_color(DIM)


def mapped(value: float, mappings: list[dict]) -> tuple[str | None, str | None]:
    for m in mappings:
        if m.get("type") == "value":
            for k, opt in m.get("options", {}).items():
                try:
                    if float(k) == value:
                        return opt.get("text"), opt.get("color")
                except ValueError:
                    continue
    return None, None


def threshold_color(value: float, thresholds: dict) -> str:
    color = "green"
    for step in thresholds.get("steps", []):
        if step.get("value") is None or value >= step["value"]:
            color = step.get("color", color)
    return NAMED_COLORS.get(color, color)


def draw_stat(ax, panel: dict, data: PanelData, start: float, end: float) -> None:
    ax.set_facecolor(PANEL_BG)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    options = panel.get("options", {})
    if not data.series:
        no_data(ax, "\n".join(data.errors) if data.errors else "No data")
        return
    texts = []
    for s in data.series[:4]:
        vals = [v for v in s.v if not math.isnan(v)]
        last = vals[-1] if vals else None
        if options.get("textMode") == "name":
            text, color = s.name, TEXT
        elif last is None:
            text, color = "No data", DIM
        else:
            text, color = mapped(last, defaults.get("mappings", []))
            if text is None:
                text = fmt_value(last, defaults.get("unit", "short"))
            if color is None:
                color = threshold_color(last, defaults.get("thresholds", {}))
            else:
                color = NAMED_COLORS.get(color, color)
        texts.append((text, color))
        if options.get("graphMode", "none") == "area" and len(vals) > 1 and len(data.series) == 1:
            ax2 = ax.inset_axes([0, 0, 1, 0.45])
            ax2.set_axis_off()
            ax2.set_xlim(start, end)
            ax2.fill_between(s.t, min(vals), [v if not math.isnan(v) else min(vals) for v in s.v],
                             color=color, alpha=0.18, linewidth=0)
            ax2.plot(s.t, s.v, color=color, linewidth=1.0)
    n = len(texts)
    for i, (text, color) in enumerate(texts):
        ax.text(0.5, 1 - (i + 0.5) / n * 0.9 - 0.05, text, transform=ax.transAxes, ha="center",
                va="center", color=color, fontsize=20 if n == 1 and len(text) < 10 else 12,
                fontweight="bold")


def bucket_bound(le: str) -> float:
    return math.inf if le in ("+Inf", "Inf") else float(le)


def draw_heatmap(ax, panel: dict, data: PanelData, start: float, end: float) -> None:
    import matplotlib.dates as mdates
    import numpy as np

    style_axes(ax)
    ax.grid(False)
    buckets = [s for s in data.series if "le" in s.labels]
    if not buckets:
        no_data(ax, "\n".join(data.errors) if data.errors else "No data")
        return
    buckets.sort(key=lambda s: bucket_bound(s.labels["le"]))
    times = sorted({x for s in buckets for x in s.t})
    index = {x: i for i, x in enumerate(times)}
    grid = np.full((len(buckets), len(times)), np.nan)
    for row, s in enumerate(buckets):
        for x, v in zip(s.t, s.v):
            grid[row, index[x]] = v
    # Cumulative bucket counts -> the count in each bucket.
    counts = np.diff(np.nan_to_num(grid), axis=0, prepend=0)
    counts[counts < 0] = 0
    t0 = mdates.date2num(datetime.fromtimestamp(times[0], timezone.utc))
    t1 = mdates.date2num(datetime.fromtimestamp(times[-1], timezone.utc))
    ax.imshow(counts, aspect="auto", origin="lower", cmap="Oranges", interpolation="nearest",
              extent=(t0, t1 if t1 > t0 else t0 + 1e-5, -0.5, len(buckets) - 0.5))
    ax.xaxis_date(tz=timezone.utc)
    time_axis(ax, start, end)
    labels = [s.labels["le"] for s in buckets]
    step = max(1, len(labels) // 8)
    ax.set_yticks(range(0, len(labels), step))
    ax.set_yticklabels(labels[::step])


DRAW = {"timeseries": draw_timeseries, "stat": draw_stat, "heatmap": draw_heatmap}


# -- the page -----------------------------------------------------------------------------------


def render(dashboard: dict, prom: Prometheus, variables: dict[str, str], start: float,
           end: float, step: float, output: Path, width_px: int, subtitle: str) -> list[str]:
    """Draws the dashboard into `output`; returns the query errors (empty when all succeeded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dashboard.get("panels", [])
    grid_h = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels), default=1)
    header_px, footer_px = 70, 30
    height_px = header_px + grid_h * ROW_UNIT_PX + footer_px
    fig = plt.figure(figsize=(width_px / 100, height_px / 100), dpi=100, facecolor=BG)
    fig.text(12 / width_px, 1 - 26 / height_px, dashboard.get("title", ""), color=TEXT,
             fontsize=15, fontweight="bold", va="center")
    fig.text(12 / width_px, 1 - 52 / height_px, subtitle, color=DIM, fontsize=8, va="center")
    fig.text(12 / width_px, 12 / height_px,
             "Rendered by monitoring/render_dashboard.py from Prometheus query_range results with "
             "the dashboard's own queries and layout; not a Grafana screenshot.",
             color=DIM, fontsize=7, va="center")
    col_px = (width_px - 16) / GRID_COLUMNS
    errors: list[str] = []
    for p in panels:
        g = p["gridPos"]
        x0 = 8 + g["x"] * col_px
        y0 = header_px + g["y"] * ROW_UNIT_PX
        w = g["w"] * col_px
        h = g["h"] * ROW_UNIT_PX
        if p.get("type") == "row":
            fig.text(x0 / width_px, 1 - (y0 + h / 2) / height_px, p.get("title", ""), color=TEXT,
                     fontsize=11, fontweight="bold", va="center")
            continue
        margin = 4
        frame = fig.add_axes((
            (x0 + margin) / width_px, 1 - (y0 + h - margin) / height_px,
            (w - 2 * margin) / width_px, (h - 2 * margin) / height_px,
        ))
        frame.set_facecolor(PANEL_BG)
        frame.set_xticks([])
        frame.set_yticks([])
        for s in frame.spines.values():
            s.set_color(PANEL_EDGE)
        frame.text(8 / (w - 2 * margin), 1 - 13 / (h - 2 * margin), p.get("title", ""),
                   transform=frame.transAxes, color=TEXT, fontsize=8.5, fontweight="bold",
                   va="center")
        data = fetch(prom, p, variables, start, end, step)
        errors += [f"panel {p.get('id')} {p.get('title')!r}: {e}" for e in data.errors]
        kind = p.get("type", "")
        draw = DRAW.get(kind)
        if p.get("type") == "stat":
            inner = (x0 + margin + 6, y0 + margin + 24, w - 2 * margin - 12, h - 2 * margin - 28)
        else:
            legend_px = 34 if kind == "timeseries" else 4
            inner = (x0 + margin + 58, y0 + margin + 26, w - 2 * margin - 66,
                     h - 2 * margin - 42 - legend_px)
        ax = fig.add_axes((
            inner[0] / width_px, 1 - (inner[1] + inner[3]) / height_px,
            inner[2] / width_px, inner[3] / height_px,
        ))
        if draw is None:
            style_axes(ax)
            no_data(ax, f"panel type {kind!r} is not drawn here")
        else:
            draw(ax, p, data, start, end)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, facecolor=BG, dpi=100)
    plt.close(fig)
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Render the Rookery dashboard's queries into a PNG (not a Grafana screenshot)."
    )
    ap.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD)
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--last", help="shorthand for --from now-LAST --to now (e.g. 15m)")
    ap.add_argument("--from", dest="start", default="now-1h",
                    help="now, now-15m, unix seconds or ISO 8601 (default now-1h)")
    ap.add_argument("--to", dest="end", default="now")
    ap.add_argument("--job", help="value of $job (default: first job with rookery_build_info)")
    ap.add_argument("--instance", default=".+", help="regex for $instance (default .+, all)")
    ap.add_argument("--scrape-interval", default="15s", help="Prometheus scrape interval")
    ap.add_argument("--rate-interval", help="value of $__rate_interval (default: Grafana's formula)")
    ap.add_argument("--step", help="query step (default: range/240, at least the scrape interval)")
    ap.add_argument("--width", type=int, default=1800, help="image width in pixels")
    args = ap.parse_args(argv)

    try:
        now = time.time()
        start = parse_time("now-" + args.last if args.last else args.start, now)
        end = parse_time("now" if args.last else args.end, now)
        scrape = parse_duration(args.scrape_interval)
        step = parse_duration(args.step) if args.step else max((end - start) / 240, scrape, 1.0)
        step = float(math.ceil(step))
        rate_interval = (args.rate_interval if args.rate_interval
                         else prom_duration(max(4 * scrape, step + scrape)))
        if end <= start:
            raise ValueError("--to must be after --from")
        dashboard = json.loads(args.dashboard.read_text())
    except (ValueError, OSError) as e:
        print(f"render_dashboard: {e}", file=sys.stderr)
        return 2

    prom = Prometheus(args.prometheus)
    job = args.job
    try:
        if job is None:
            jobs = prom.label_values("job", "rookery_build_info")
            if not jobs:
                print("render_dashboard: no rookery_build_info series in Prometheus; "
                      "pass --job, or check that it scrapes the broker", file=sys.stderr)
                return 2
            job = jobs[0]
    except PromError as e:
        print(f"render_dashboard: {e}", file=sys.stderr)
        return 2
    variables = {
        "__rate_interval": rate_interval,
        "__interval": prom_duration(step),
        "__range": prom_duration(end - start),
        "job": job,
        "instance": args.instance,
        "datasource": "prometheus",
    }
    fmt = "%Y-%m-%d %H:%M:%S UTC"
    subtitle = (
        f"{datetime.fromtimestamp(start, timezone.utc).strftime(fmt)} to "
        f"{datetime.fromtimestamp(end, timezone.utc).strftime(fmt)}   job={job}   "
        f"instance=~{args.instance}   step={prom_duration(step)}   "
        f"$__rate_interval={rate_interval}"
    )
    errors = render(dashboard, prom, variables, start, end, step, args.output, args.width, subtitle)
    n_panels = sum(1 for p in dashboard.get("panels", []) if p.get("type") != "row")
    print(f"wrote {args.output} ({n_panels} panels, {len(errors)} query errors)")
    for e in errors:
        print(f"  query error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
