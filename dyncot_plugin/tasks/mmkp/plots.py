"""The PNG of ``dyncot-eval mmkp``: F1@k / MAP@5 (left) and mean generated length (right) per mode, oracle and
baseline run, where a table of a dozen columns is hard to compare at a glance.

What is drawn depends on the result: with several modes, each mode and the oracle (and the ``--baseline`` run);
with a baseline only, this run and the baseline; else this run's posts that think against those that do not.
With a frontier (always and never files with ``think_prob``), a second row draws F1@1 and F1@M of the ``auto`` of
every threshold against its think rate and against its mean generated length, marking the point of the chosen
threshold (default 0.5), the F1@M-best point and the given ``auto`` file (e.g. the greedy rule's) as evaluated.
matplotlib is imported only here, lazily, and used through its object API on the Agg canvas (no pyplot state,
no display needed).
"""

from __future__ import annotations

from pathlib import Path

from dyncot_plugin.io.files import atomic_open

__all__ = ["frontier_series", "plot_series", "write_plot"]


def _scores(d: dict | None, keys: list[str]) -> dict[str, float | None]:
    return {k: (d or {}).get(k) for k in keys}


def plot_series(result: dict) -> tuple[list[str], list[tuple[str, dict]], list[tuple[str, dict]]]:
    """``(score keys, [(label, {key: score})], [(label, gen_len)])`` of the two panels."""
    ks = [k for k in result if k.startswith("f1@")]
    keys = ks + (["map@5"] if "map@5" in result else [f"map@{ks[-1][3:]}"])
    scores: list[tuple[str, dict]] = []
    lengths: list[tuple[str, dict]] = []
    comp = result.get("comparison")
    if comp:
        for m in comp["modes"]:
            scores.append((m, _scores(result["modes"][m], keys)))
            lengths.append((m, comp["gen_len"][m]))
        scores.append(("oracle", _scores(comp["oracle"], keys)))
        lengths.append(("oracle", comp["oracle"]["gen_len"]))
    base = result.get("vs_baseline")
    if base:
        if not comp:
            scores.append(("this run", _scores(result, keys)))
            lengths.append(("this run", result["gen_len"]))
        scores.append((base["name"], {k: base["scores"]["all"][k]["baseline"] for k in keys}))
        lengths.append((base["name"], {k: v["baseline"] for k, v in base["gen_len"].items()}))
    if not comp and not base:
        by = result.get("by_think") or {}
        scores.append(("all", _scores(result, keys)))
        for name, label in (("thinking", "thinking"), ("not_thinking", "not thinking")):
            if by.get(name) and by[name]["num_posts"]:
                scores.append((label, _scores(by[name], keys)))
        lengths.append(("this run", result["gen_len"]))
    return keys, scores, lengths


def frontier_series(result: dict) -> tuple[list[float], list[float], dict[str, list[float]], list[tuple[str, dict]]]:
    """``(think rates, mean lengths, {"f1@1": [...], "f1@M": [...]}, [(label, point)])`` of the frontier panels (all
    in the JSON's units: fractions and length units); the marks are the chosen threshold's point, the F1@M-best one
    and the ``auto`` file's own (when given)."""
    points = result["frontier"]
    info = result["frontier_summary"]
    rates = [p["think_rate"] for p in points]
    lengths = [p["mean_tokens"] for p in points]
    f1 = {k: [p[k] for p in points] for k in ("f1@1", "f1@M") if k in points[0]}
    marks = [(f"threshold {info['threshold']:g}", info["at_threshold"]),
             (f"best F1@M (threshold {info['best']['threshold']:.3g})", info["best"])]
    auto = info.get("auto_file")
    if auto:
        rule = auto.get("think")
        label = "auto file" + (" (greedy)" if rule == "greedy" else
                               f" (threshold {auto['threshold']:g})" if rule == "auto" and auto.get("threshold") is not None
                               else "")
        marks.append((label, auto))
    return rates, lengths, f1, marks


def _draw_frontier(result: dict, ax_rate, ax_len) -> None:
    rates, lengths, f1, marks = frontier_series(result)
    style = {"marker": "." if len(rates) <= 200 else None, "linewidth": 1.2}
    for key, ys in f1.items():
        pct = [100 * y for y in ys]
        ax_rate.plot([100 * r for r in rates], pct, label=key.upper(), **style)
        ax_len.plot(lengths, pct, label=key.upper(), **style)
    symbols = (("*", "gold"), ("o", "red"), ("X", "black"))  # one look per mark, on both curves
    for (label, p), (sym, color) in zip(marks, symbols):
        for key in f1:
            if p.get(key) is None or p.get("mean_tokens") is None:
                continue
            kw = {"marker": sym, "s": 90, "zorder": 3, "color": color, "edgecolors": "black", "linewidths": 0.6,
                  "label": label if key == "f1@M" else None}
            ax_rate.scatter([100 * p["think_rate"]], [100 * p[key]], **kw)
            ax_len.scatter([p["mean_tokens"]], [100 * p[key]], **kw)
    unit = result["frontier_summary"]["unit"].replace("whitespace_words", "words")
    ax_rate.set_xlabel("think rate (%)")
    ax_rate.set_ylabel("score (%)")
    ax_rate.set_title(f"auto by think_prob threshold: {len(rates)} points")
    ax_len.set_xlabel(f"mean generated length ({unit})")
    ax_len.set_ylabel("score (%)")
    ax_len.set_title("score against length")
    for ax in (ax_rate, ax_len):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def write_plot(result: dict, path: str | Path) -> tuple[Path | None, str | None]:
    """Draw the figure to ``path`` (all or nothing); returns ``(path, None)``, or ``(None, note)`` when matplotlib is
    not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None, "matplotlib is not installed: no PNG (pip install matplotlib)"

    keys, scores, lengths = plot_series(result)
    if result.get("frontier"):
        fig = Figure(figsize=(11, 8.4))
        (ax_f1, ax_len), (ax_fr_rate, ax_fr_len) = fig.subplots(2, 2, gridspec_kw={"width_ratios": [3, 2]})
        _draw_frontier(result, ax_fr_rate, ax_fr_len)
    else:
        fig = Figure(figsize=(11, 4.2))
        ax_f1, ax_len = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})

    width = 0.8 / max(len(scores), 1)
    for j, (label, vals) in enumerate(scores):
        xs = [i + (j - (len(scores) - 1) / 2) * width for i in range(len(keys))]
        ys = [100 * vals[k] if vals[k] is not None else 0.0 for k in keys]
        bars = ax_f1.bar(xs, ys, width, label=label)
        # vertical labels: with three or more bars per group horizontal ones run into each other
        ax_f1.bar_label(bars, labels=[f"{y:.1f}" if vals[k] is not None else "-" for y, k in zip(ys, keys)],
                        fontsize=7, padding=2, rotation=90 if len(scores) > 2 else 0)
    ax_f1.set_xticks(range(len(keys)), [k.upper() for k in keys])
    ax_f1.set_ylim(0, 1.15 * max([100 * v for _, d in scores for v in d.values() if v is not None] + [1.0]))
    ax_f1.set_ylabel("score (%)")
    ax_f1.set_title(f"CMKP scores, {result['num_posts']} posts")
    ax_f1.legend(fontsize=8)

    parts = (("all", "all outputs"), ("with_think", "thinking"), ("without_think", "not thinking"))
    width = 0.8 / len(parts)
    for j, (key, label) in enumerate(parts):
        xs = [i + (j - 1) * width for i in range(len(lengths))]
        ys = [gl.get(key) or 0.0 for _, gl in lengths]
        bars = ax_len.bar(xs, ys, width, label=label)
        ax_len.bar_label(bars, labels=[f"{gl[key]:.1f}" if gl.get(key) is not None else "-" for _, gl in lengths],
                         fontsize=7, padding=1)
    ax_len.set_xticks(range(len(lengths)), [label for label, _ in lengths])
    unit = result["gen_len"]["unit"]
    ax_len.set_ylabel(f"mean generated length ({unit.replace('whitespace_words', 'words')})")
    ax_len.set_title("generated length")
    ax_len.legend(fontsize=8)
    fig.tight_layout()

    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return path, None
