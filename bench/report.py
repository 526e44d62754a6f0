"""The verdicts, the table and the plot of ``bench/compare.py``, from its JSON result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TARGETS = {
    "gateway_over_raw_single": 0.60,
    "gateway_over_naive_single": 5.0,
    "gateway_batched_readings_per_s": 200_000,
    "p99_ms_at_5000": 5.0,
    "gateway_cpu_us_per_reading_single": 40.0,
}
SYSTEM_LABELS = {"raw": "raw ceiling", "naive": "naive script", "gateway": "gateway"}
_NOISY = 25.0  # per cent of a core used by other processes that makes a step noisy


# -- verdicts ------------------------------------------------------------------------------
def evaluate(shapes: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ratios per shape, and the issue's targets with pass/fail (None: not measured).

    A system limited by the generator (or ``--max-rate``) sustained at least its figure, so a
    ratio over it is at most what is shown ("≤"), and a ratio of it at least ("≥")."""
    ratios: dict[str, Any] = {}
    for shape, systems in shapes.items():
        ratios[shape] = {}
        gw = systems.get("gateway")
        for other in ("raw", "naive"):
            den = systems.get(other)
            num_rate = gw and gw["sustained_readings_per_s"]
            den_rate = den and den["sustained_readings_per_s"]
            if not (num_rate and den_rate):
                ratios[shape][f"gateway/{other}"] = None
                continue
            low_num = gw["limited_by"] in ("generator", "max-rate")
            low_den = den["limited_by"] in ("generator", "max-rate")
            ratios[shape][f"gateway/{other}"] = num_rate / den_rate
            bound = "~" if low_num and low_den else "≥" if low_num else "≤" if low_den else ""
            ratios[shape][f"gateway/{other} bound"] = bound

    def get(shape: str, *path: str) -> Any:
        node: Any = shapes.get(shape, {}).get("gateway")
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    def target(
        name: str, limit: float, at_least: bool, measured: Any, unit: str, bound: str = ""
    ) -> dict[str, Any]:
        """``bound``: "≤" when the true value is at most ``measured`` (a ratio over a ceiling the
        load generator set), "≥" at least, "~" either: then only one verdict is certain."""
        value = measured if isinstance(measured, int | float) else None
        shown = {
            "%": "{:.0%}",
            "x": "{:.1f}x",
            "/s": "{:,.0f}/s",
            "ms": "{:.2f} ms",
            "µs": "{:.1f} µs/reading",
        }[unit]
        passed = None if value is None else value >= limit if at_least else value <= limit
        if bound and passed is not None:
            certain = (bound == "≥") == at_least if bound != "~" else False
            passed = passed if passed == certain else None  # the other verdict needs the value
        return {
            "name": name,
            "target": ("≥ " if at_least else "≤ ") + shown.format(limit),
            "measured": measured,
            "bound": bound,
            "shown": bound + shown.format(value) if value is not None else str(measured or "-"),
            "passed": passed,
        }

    t = TARGETS
    single = ratios.get("single", {})
    targets = [
        target(
            "single: gateway/raw",
            t["gateway_over_raw_single"],
            True,
            single.get("gateway/raw"),
            "%",
            single.get("gateway/raw bound", ""),
        ),
        target(
            "single: gateway/naive",
            t["gateway_over_naive_single"],
            True,
            single.get("gateway/naive"),
            "x",
            single.get("gateway/naive bound", ""),
        ),
        target(
            "batched: gateway, full pipeline",
            t["gateway_batched_readings_per_s"],
            True,
            get("batched", "sustained_readings_per_s"),
            "/s",
        ),
    ]
    for shape in shapes:
        p99 = get(shape, "latency_ms", "5000")
        measured = p99["p99"] if isinstance(p99, dict) else p99
        targets.append(
            target(f"{shape}: gateway p99 at 5,000/s", t["p99_ms_at_5000"], False, measured, "ms")
        )
    targets.append(
        target(
            "single: gateway CPU at saturation",
            t["gateway_cpu_us_per_reading_single"],
            False,
            get("single", "at_saturation", "cpu_us_per_reading"),
            "µs",
        )
    )
    return ratios, targets


# -- the table ------------------------------------------------------------------------------------
def _num(value: Any, fmt: str, none: str = "-") -> str:
    return none if not isinstance(value, int | float) else format(value, fmt)


def _rate(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "-"
    lo = summary["sustained_readings_per_s"]
    if lo is None:
        return "none"
    text = f"{lo:,.0f}"
    if summary["limited_by"] == "generator":
        return f"≥ {text} (generator)"
    if summary["limited_by"] == "max-rate":
        return f"≥ {text} (max rate)"
    return text


def _latency(value: Any) -> str:
    if value == "saturated" or value is None:
        return "saturated" if value else "-"
    return f"{value['p50']:.2f} / {value['p99']:.2f} / {value['p99_9']:.1f}"


def _row(cells: list[str], widths: list[int]) -> str:
    first, *rest = zip(cells, widths, strict=True)
    return f"{first[0]:<{first[1]}}" + "".join(f"  {c:>{w}}" for c, w in rest)


def format_table(result: dict[str, Any]) -> str:
    """The human-readable report of one run."""
    m, c = result["machine"], result["config"]
    shapes: dict[str, dict[str, Any]] = result["shapes"]
    systems: list[str] = c["systems"]
    env = c.get("gateway_env", {})
    durability = env.get("EDGEGW_SPOOL__DURABILITY", "full (the default)")
    lines = [
        "Side by side: raw MQTT ceiling, naive ONNX script, gateway (full pipeline: scoring, "
        f"alerts, spool durability {durability}, uplink to the OCI stand-in)",
        f"QoS 1, {c['machines']} machines; {m['cpu_model']}, {m['cores']} cores, Linux "
        f"{m['kernel']}, Python {m['python']}, onnxruntime {m['onnxruntime']}, paho-mqtt "
        f"{m['paho_mqtt']}, {m['mosquitto']}; {result['date']}, {result['wall_seconds']:.0f} s",
        *[f"gateway settings from the environment: {k}={v}" for k, v in sorted(env.items())],
        "",
        f"Sustained readings/s ({c['sustained_means']}; ramp, then bisection)",
    ]
    widths = [18, *[20] * len(systems), 12, 14]
    lines.append(
        _row(
            ["messages", *[SYSTEM_LABELS[s] for s in systems], "gateway/raw", "gateway/naive"],
            widths,
        )
    )
    for shape, by_system in shapes.items():
        ratio = result["ratios"].get(shape, {})
        lines.append(
            _row(
                [
                    f"{shape} ({c['shapes'][shape]}/msg)",
                    *[_rate(by_system.get(s)) for s in systems],
                    ratio.get("gateway/raw bound", "") + _num(ratio.get("gateway/raw"), ".0%"),
                    ratio.get("gateway/naive bound", "")
                    + _num(ratio.get("gateway/naive"), ".1f")
                    + ("x" if ratio.get("gateway/naive") else ""),
                ],
                widths,
            )
        )

    lines += [
        "",
        "Publish → received latency, ms: p50 / p99 / p99.9 (raw: the telemetry at its counting "
        "subscriber; naive and gateway: the score at the HMI's subscriber)",
    ]
    widths = [18, 10, *[22] * len(systems)]
    lines.append(_row(["messages", "offered/s", *[SYSTEM_LABELS[s] for s in systems]], widths))
    for shape, by_system in shapes.items():
        for rate in c["latency_rates"]:
            key = f"{rate:g}"
            cells = [
                _latency(by_system[s]["latency_ms"].get(key)) if s in by_system else "-"
                for s in systems
            ]
            lines.append(_row([shape, f"{rate:,.0f}", *cells], widths))

    lines += [
        "",
        "At saturation (the highest sustained step): the system's own process (raw: the "
        "counting subscriber); RSS: its peak in that step, and the largest peak of any step "
        "(overloaded ones included); CPU % of one core over the step",
    ]
    widths = [18, 13, 11, 14, 18, 7, 8, 7, 8, 6, 6]
    head = [
        "messages",
        "system",
        "readings/s",
        "CPU µs/reading",
        "RSS MiB: peak, max",
        "system",
        "receiver",
        "broker",
        "loadgen",
        "cloud",
        "other",
    ]
    lines.append(_row(head, widths))
    noisy = []
    for shape, by_system in shapes.items():
        for s in systems:
            summary = by_system.get(s)
            at = summary and summary["at_saturation"]
            if not at:
                continue
            share = at["cpu_percent_of_one_core"]
            if share.get("other", 0) > _NOISY:
                noisy.append(f"{shape} {s} at {at['rate']:,.0f}/s: other {share['other']:.0f} %")
            lines.append(
                _row(
                    [
                        shape,
                        SYSTEM_LABELS[s],
                        f"{at['rate']:,.0f}",
                        _num(at["cpu_us_per_reading"], ".1f"),
                        _num(at["peak_rss_bytes"] / 2**20, ".0f")
                        + ", "
                        + _num(summary["peak_rss_bytes"] / 2**20, ".0f"),
                        *[
                            _num(share.get(k), ".0f")
                            for k in ("system", "receiver", "broker", "loadgen", "cloud", "other")
                        ],
                    ],
                    widths,
                )
            )

    gw_rows = [(shape, by["gateway"]) for shape, by in shapes.items() if "gateway" in by]
    if gw_rows:
        lines += [
            "",
            "Gateway at saturation. model call: mean of gateway_model_call_seconds (the loop's "
            "view: a call in the scorer thread includes the loop's other work meanwhile); ONNX "
            "share of the gateway's CPU: that histogram's sum / CPU time, and calls x one call's "
            "CPU time measured here (est.); uplink: gateway_uplink_bytes_total / readings sent "
            "(telemetry and score); threads: % of one core, main = the event loop",
        ]
        widths = [18, 10, 13, 7, 14, 14, 16, 44]
        head = [
            "messages",
            "mean batch",
            "model call µs",
            "ONNX µs",
            "ONNX share",
            "ONNX est.",
            "uplink B/reading",
            "threads: main, others",
        ]
        lines.append(_row(head, widths))
        for shape, gw in gw_rows:
            at = (gw["at_saturation"] or {}).get("gateway", {})
            threads = dict(at.get("threads_percent_of_one_core", {}))
            main = threads.pop("main", None)
            others = [v for v in threads.values() if v >= 0.5][:4]
            busy = f"{_num(main, '.0f')}; " + (", ".join(f"{v:.0f}" for v in others) or "-")
            lines.append(
                _row(
                    [
                        shape,
                        _num(at.get("mean_batch"), ".1f"),
                        _num(at.get("mean_model_call_us"), ".0f"),
                        _num(at.get("onnx_call_us_measured_here"), ".0f"),
                        _num(at.get("onnx_share_of_cpu"), ".1%"),
                        _num(at.get("onnx_share_of_cpu_estimate"), ".1%"),
                        _num(gw.get("uplink", {}).get("bytes_per_reading"), ".2f"),
                        busy,
                    ],
                    widths,
                )
            )

    lines += ["", "Targets"]
    for t in result["targets"]:
        verdict = {True: "PASS", False: "MISS", None: "not measured"}[t["passed"]]
        if t["passed"] is None and t.get("bound"):
            verdict = "not established (a bound: the load generator set the ceiling)"
        lines.append(f"  {t['name']:<36} {t['target']:<22} {t['shown']:>20}  {verdict}")

    lines += _extras(result.get("extras", {}))
    lines += [f"warning: noisy step (other processes busy): {n}" for n in noisy]
    for shape, by_system in shapes.items():
        for s, summary in by_system.items():
            lines += [f"warning: {shape} {s}: {p}" for p in summary.get("log_problems", [])[:5]]
    return "\n".join(lines)


def _extras(extras: dict[str, Any]) -> list[str]:
    lines = []
    spool = extras.get("spool")
    if spool and "runs" in spool:
        cells = [
            f"{r['durability']}/{r['group']} {r['append_readings_per_s']:,}" for r in spool["runs"]
        ]
        drains = [
            f"{r['drain_readings_per_s']:,}" for r in spool["runs"] if "drain_readings_per_s" in r
        ]
        lines += [
            "",
            f"Spool (bench/spool.py, {spool['readings']:,} readings in micro-batches of "
            f"{spool['batch']}, {spool['body_bytes_per_reading']} B a reading on disk): append "
            f"readings/s by durability/batches per commit: {', '.join(cells)}; drain "
            f"{' and '.join(drains)} readings/s",
        ]
    drain = extras.get("drain")
    if drain and "rate_ratio" in drain:
        lines.append(
            f"Drain (bench/drain.py): {drain['readings']:,} readings spooled, sent in "
            f"{drain['drain_seconds']} s at {drain['rate_achieved_bytes_per_s']:,} B/s "
            f"({drain['rate_ratio']:.1%} of {drain['rate_configured_bytes_per_s']:,}), "
            f"{drain['bytes_per_reading_on_the_link']} B a reading on the link, arrived "
            f"{drain['arrived']}, throttled {drain['throttled']}"
        )
    wire = extras.get("wirebytes")
    if wire and "rows" in wire:
        cells = [
            f"{r['case']}/{r['readings']} {r['ratio']:.1%} ({r['wire_bytes_per_reading']:.2f} B)"
            for r in wire["rows"]
        ]
        lines.append(f"Wire format vs compact JSON (bench/wirebytes.py): {', '.join(cells)}")
    for name, value in extras.items():
        if isinstance(value, dict) and "error" in value:
            lines.append(f"warning: bench/{name}.py failed: {value['error'][-300:]}")
    return lines


def plot_latency(result: dict[str, Any], path: Path) -> str | None:
    """Latency p50 and p99 against offered load, per system and shape; the PNG's path, or
    None (with a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: no plot: matplotlib is missing (pip install -e '.[bench]')")
        return None
    shapes: dict[str, dict[str, Any]] = result["shapes"]
    fig, axes = plt.subplots(1, len(shapes), figsize=(6.5 * len(shapes), 4.8), squeeze=False)
    colors = {"raw": "tab:gray", "naive": "tab:orange", "gateway": "tab:blue"}
    for ax, (shape, by_system) in zip(axes[0], shapes.items(), strict=True):
        for system, summary in by_system.items():
            steps = sorted(
                (s for s in summary["steps"] if s["sustained"] and s["latency_ms"]),
                key=lambda s: s["rate"],
            )
            if not steps:
                continue
            rates = [s["rate"] for s in steps]
            label = SYSTEM_LABELS[system]
            color = colors[system]
            ax.plot(
                rates,
                [s["latency_ms"]["p50"] for s in steps],
                "o-",
                color=color,
                label=f"{label} p50",
            )
            ax.plot(
                rates,
                [s["latency_ms"]["p99"] for s in steps],
                "^--",
                color=color,
                label=f"{label} p99",
            )
            if summary["limited_by"] in ("backlog", "loss"):
                ax.axvline(
                    summary["first_unsustained_rate"], color=color, linestyle=":", linewidth=1
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered readings/s (QoS 1)")
        ax.set_ylabel("publish → received, ms")
        batch = result["config"]["shapes"][shape]
        ax.set_title(f"{shape} messages ({batch} reading{'s' if batch > 1 else ''} each)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    m = result["machine"]
    fig.suptitle(
        f"Latency against offered load (sustained steps; dotted: first unsustained rate)\n"
        f"{m['cpu_model']}, {m['cores']} cores, {result['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
