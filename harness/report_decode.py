"""The report's decode figure: per variant, the cache a step reads and the bandwidth it gets,
against the cached context N (decode settings only; other settings draw nothing).

Step time against N, with its fitted exponent, is the scaling table's and the time figure's
(a decode row keeps N in ``nq``); this module only reads rows.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from harness.report_data import series
from harness.report_figures import FigureView, figure
from harness.report_plot import legend
from harness.vocab import DECODE


@figure("decode", order=15)
def decode_figure(view: FigureView) -> Figure | str:
    """Cache MiB and achieved GiB/s against the context N, per variant and B, log-log."""
    if view.setting is None or view.setting.mode != DECODE:
        return ""  # not a decode setting: nothing to draw, nothing to say
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")
    cache_ax, rate_ax = fig.subplots(1, 2)
    fig.suptitle(f"Decode: cache and bandwidth vs context: {view.title()}")
    by = series(view.rows)
    batches = sorted({b for _, b in by})
    for (label, b), rs in by.items():
        style = "o-" if b == batches[0] else "s--"
        name = f"{view.names[label]}, B={b}"
        cache_ax.plot([r.nq for r in rs], [r.cache_mib or float("nan") for r in rs], style,
                      ms=3, color=view.colour[label], label=name)
        rate_ax.plot([r.nq for r in rs], [r.gib_s or float("nan") for r in rs], style, ms=3,
                     color=view.colour[label], label=name)
    copy = [r.copy_gib_s for rs in by.values() for r in rs if r.copy_gib_s]
    if copy:
        rate_ax.axhline(max(copy), color="grey", lw=0.8, ls=":",
                        label=f"measured copy bandwidth {max(copy):.3g} GiB/s")
    for ax, what in ((cache_ax, "cache the step holds (MiB)"),
                     (rate_ax, "achieved GiB/s (cache read + step tokens)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("cached context N (tokens)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    legend(rate_ax, outside=True)
    return fig
