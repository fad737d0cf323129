"""The result as the Markdown table `make bench` prints."""

from __future__ import annotations

import statistics
from typing import Any


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "count":
        return f"{value:.0f}"
    if unit in ("ms", "MB", "s/GB"):
        return (
            f"{value:.2f}"
            if abs(value) < 10
            else f"{value:.1f}"
            if abs(value) < 100
            else f"{value:.0f}"
        )
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(result: dict[str, Any]) -> str:
    with_nginx = any(e["values"].get("nginx+uploadsvc") is not None for e in result["table"])
    header = ["figure", "unit", "limit", "baseline", "uploadsvc"]
    if with_nginx:
        header.append("nginx+u")
    header += ["@tus/server", "u/limit", "u/base", "u/tus"]
    if with_nginx:
        header += ["n/limit", "n/base"]
    header += ["target", "uploadsvc"]
    if with_nginx:
        header.append("nginx+u")
    lines = []
    for e in result["table"]:
        v = e["values"]
        cells = [
            e["label"],
            e["unit"],
            fmt(v["limit"], e["unit"]),
            fmt(v["baseline"], e["unit"]),
            fmt(v["uploadsvc"], e["unit"]),
        ]
        if with_nginx:
            cells.append(fmt(v["nginx+uploadsvc"], e["unit"]))
        cells.append(fmt(v.get("@tus/server"), e["unit"]))
        cells += [fmt_ratio(e["uploadsvc_vs_limit"]), fmt_ratio(e["uploadsvc_vs_baseline"])]
        cells.append(fmt_ratio(e.get("uploadsvc_vs_tus")))
        if with_nginx:
            cells += [fmt_ratio(e["nginx_vs_limit"]), fmt_ratio(e["nginx_vs_baseline"])]
        verdict = {True: "PASS", False: "MISS", None: "-"}
        cells += [e.get("target") or "", verdict[e.get("pass")] if "pass" in e else ""]
        if with_nginx:
            cells.append(verdict[e.get("nginx_pass")] if "nginx_pass" in e else "")
        lines.append(cells)
    out = [markdown(header, lines)]
    meta = result["meta"]
    if meta["extras"]:
        out += ["", render_extras(result)]
    out.append("")
    out += [f"- {note}" for note in meta["notes"]]
    client = meta["client"]
    if client["loopback_MBps"] is not None:
        busiest = {n: v for n, v in client["max_client_cpu_share"].items() if n != "limit"}
        out.append(
            f"- Load generator: sendfile pushes {client['loopback_MBps']:.0f} MB/s over loopback;"
            " during the concurrent runs its processes used at most "
            + ", ".join(f"{v:.0%} ({n})" for n, v in busiest.items())
            + " of one core."
        )
    bad = meta["content_mismatch"]
    out.append(
        "- Stored bytes compared with what was sent (first repetition, every 1 GiB upload): "
        + ("all identical." if not bad else f"MISMATCH for {', '.join(bad)}.")
    )
    kept = meta["drops_kept_every_byte"]
    out.append(
        "- After a drop, the offset equalled the bytes delivered in every run for: "
        + (", ".join(n for n, ok in kept.items() if ok) or "none")
        + "; not for: "
        + (", ".join(n for n, ok in kept.items() if not ok) or "none")
        + "."
    )
    for name, why in meta["skipped"].items():
        out.append(f"- {name} skipped: {why}")
    load = meta["load_average"]
    out.append(
        f"- {meta['date']}, git {meta['git']}, {meta['cpus']} CPUs, kernel {meta['kernel']},"
        f" Python {meta['python']}, data on {meta['data_fs']}; load average (1 min) while"
        f" measuring: median {statistics.median(load['during'] or [0]):.1f},"
        f" max {max(load['during'] or [0]):.1f}."
    )
    return "\n".join(out)


def render_extras(result: dict[str, Any]) -> str:
    """The ``--also`` targets: values, and their ratio to uploadsvc."""
    extras = list(result["meta"]["extras"])
    header = ["figure", "unit", "uploadsvc", *extras, *(f"{n}/u" for n in extras)]
    lines = []
    for e in result["table"]:
        if e["values"]["uploadsvc"] is None:
            continue
        cells = [e["label"], e["unit"], fmt(e["values"]["uploadsvc"], e["unit"])]
        cells += [fmt(e["values"][n], e["unit"]) for n in extras]
        cells += [fmt_ratio(e["extras_vs_uploadsvc"][n]) for n in extras]
        lines.append(cells)
    return markdown(header, lines)


def markdown(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cells in lines:
        out.append(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
        )
    return "\n".join(out)
