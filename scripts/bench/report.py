"""The report of `make bench`: plots, the printed table and the Markdown of docs/performance.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scripts.bench.common import OUT, ratio, say
from scripts.stack.devstack import ROOT


# Report ----------------------------------------------------------------------------------------
def _save(plt: Any, fig: Any, name: str) -> Path:
    fig.tight_layout()
    path = OUT / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_latency(plt: Any, lat: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = list(lat)
    for offset, name, color in ((-0.2, "ours", "tab:blue"), (0.2, "baseline", "tab:red")):
        for i, point in enumerate(labels):
            d = lat[point][name]["latency_ms"]
            if d["p50"] is None:
                continue
            ax.vlines(i + offset, d["p50"], d["p99"], color=color, linewidth=6, alpha=0.6)
            ax.plot(i + offset, d["p50"], "o", color=color)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("added delta latency, ms (dot p50, bar to p99)")
    ax.set_title("Token to browser: ours (blue) against the original design (red)")
    return _save(plt, fig, "latency.png")


def _plot_tradeoff(plt: Any, sweep_res: dict[str, Any]) -> Path:
    fig, axes = plt.subplots(1, len(sweep_res), figsize=(11, 4.5))
    for ax, (rate, runs) in zip(axes, sweep_res.items(), strict=False):
        for label, run in runs.items():
            x, y = run["latency_ms"]["p50"], run["commands_per_1000_tokens"]
            base, rest = label == "baseline", label.endswith("-rest")
            marker, color, text = "o", "tab:blue", f"{run['flush_ms']} ms"
            if base:
                marker, color, text = "s", "tab:red", "original"
            elif rest:
                marker, color, text = "^", "tab:orange", f"{text}, REST subscribe"
            ax.plot(x, y, marker, color=color)
            ax.annotate(text, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("p50 added latency, ms")
        ax.set_ylabel("Redis commands per 1,000 tokens (1 viewer)")
        ax.set_title(f"{rate}: flush interval trade-off")
    return _save(plt, fig, "cost-latency.png")


def _plot_concurrency(plt: Any, conc: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax2 = ax.twinx()
    for name, color in (("gthread", "tab:blue"), ("gevent", "tab:green")):
        steps = conc.get(name, {}).get("steps", [])
        live = [s["live"] for s in steps]
        ax.plot(live, [s["p99_ms"] or 0 for s in steps], "-o", color=color, label=f"{name} p99")
        ax2.plot(live, [s["rss_mb"] for s in steps], "--", color=color, label=f"{name} RSS")
    ax.axhline(250, color="grey", linestyle=":")
    ax.set_xlabel("live streaming jobs (20 tokens/s each)")
    ax.set_ylabel("p99 added latency, ms")
    ax2.set_ylabel("worker RSS, MB")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    return _save(plt, fig, "concurrency.png")


def plots(results: dict[str, Any]) -> list[str]:
    """PNG files: latency ours vs baseline, the cost-latency trade-off, concurrency vs p99/RSS."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return []
    written = []
    if results.get("latency"):
        written.append(_plot_latency(plt, results["latency"]))
    if results.get("sweep"):
        written.append(_plot_tradeoff(plt, results["sweep"]))
    if results.get("concurrency"):
        written.append(_plot_concurrency(plt, results["concurrency"]))
    return [str(path.relative_to(ROOT)) for path in written]


Rows = list[tuple[str, str, str, str]]


def _streaming_rows(results: dict[str, Any]) -> Rows:
    rows: Rows = []

    def row(figure: str, ours: Any, baseline: Any = "", target: Any = "") -> None:
        rows.append((figure, str(ours), str(baseline), str(target)))

    for point, d in results.get("latency", {}).items():
        o, b = d["ours"]["latency_ms"], d["baseline"]["latency_ms"]
        got = (
            d["ours"].get("streams_with_tokens", d["ours"]["streams"]),
            d["baseline"].get("streams_with_tokens", d["baseline"]["streams"]),
        )
        n = d["ours"]["streams"]
        row(
            f"added latency {point} p50 / p99 ms",
            f"{o['p50']} / {o['p99']}" + (f" ({got[0]}/{n} streams)" if got[0] < n else ""),
            f"{b['p50']} / {b['p99']} (x{d['p50_ratio']} / x{d['p99_ratio']})"
            + (f" ({got[1]}/{n} streams)" if got[1] < n else ""),
            "p99 <= 250 at 100 streams" if point.startswith("100x") else "",
        )
    c = results.get("cost", {})
    if c:
        for v in (0, 1):
            o, b = c[f"ours-{v}"], c[f"baseline-{v}"]
            row(
                f"Redis commands per job, {v} viewer",
                o["commands"],
                f"{b['commands']} (x{ratio(b['commands'], o['commands'])})",
                "<= 45, >= 10x fewer" if v == 0 else "",
            )
            row(
                f"$ per 1,000 jobs, {v} viewer",
                o["usd_per_1000_jobs"],
                b["usd_per_1000_jobs"],
                "<= 0.10" if v == 0 else "",
            )
        if "ours_per_flush" in c:
            o, b, before = c["ours_per_flush"], c["baseline_per_flush"], c["before_per_flush"]
            by = o["by_command"]
            row(
                "Redis commands per flush, 1 viewer, added per delta event (flushes; XADD + XREAD)",
                f"{o['commands']} ({o['flushes']}; {by.get('xadd')} + {by.get('xread')})",
                f"{b['commands']} ({b['flushes']}); before: {before.get('per_delta_event', '?')}",
                "<= 2",
            )
            issue, before_issue = o.get("issue_count"), before["per_flush"]
            if issue:
                row(
                    "Redis commands per flush, the issue's count (all / nominal flushes)",
                    f"{issue['commands']} ({issue['nominal_flushes']} x {issue['flush_ms']} ms)",
                    f"before: {before_issue} (1,406 / 400)",
                    "<= 2",
                )
            row(
                "Redis commands of the viewer's upkeep (slot, watch, running; its stream s)",
                f"{o.get('upkeep_commands')} ({o.get('viewer_s')} s)",
                f"{b.get('upkeep_commands')} ({b.get('viewer_s')} s)",
                "",
            )
        if "ours-left" in c:
            o, b = c["ours-left"], c["baseline-left"]
            row(
                f"Redis commands per job, a viewer who leaves after {c['seconds'] // 6} s",
                f"{o['commands']} (unwatched {c['ours-0']['commands']})",
                f"{b['commands']} (x{ratio(b['commands'], o['commands'])})",
                "",
            )
        row("QStash messages per successful job", c["ours-0"]["qstash_messages"], "", "1")
        row("QStash messages per failed job (3 retries)", c["failed_job_qstash_messages"], "", "")
    for rate, runs in results.get("sweep", {}).items():
        b = runs["baseline"]
        for label, run in runs.items():
            if label == "baseline":
                continue
            row(
                f"sweep {rate} {label}: cmds/1k tokens, p50 ms",
                f"{run['commands_per_1000_tokens']}, {run['latency_ms']['p50']}",
                f"{b['commands_per_1000_tokens']}, {b['latency_ms']['p50']}",
                ">= 2x on both" if label == "ours-150ms" else "",
            )
    return rows


def _scale_rows(results: dict[str, Any]) -> Rows:
    """Scale-out, detached mode's live jobs and the queue ETA."""
    rows: Rows = []

    def row(figure: str, ours: Any, baseline: Any = "", target: Any = "") -> None:
        rows.append((figure, str(ours), str(baseline), str(target)))

    b = results.get("boxes")
    if b:
        row(
            f"jobs per hour, {b['job_seconds']:.0f} s jobs, two boxes (attempts per box)",
            f"{b['two']['jobs_per_hour']} ({' + '.join(map(str, b['two']['attempts_per_box']))})",
            f"one box {b['one']['jobs_per_hour']} (x{b['ratio']})",
            "x2",
        )
    live = results.get("live_jobs")
    if live:
        # Results from before payg was measured hold one plan at the top level.
        by_plan = live.get("plans") or {live["plan"]: live}
        for plan, runs in by_plan.items():
            d, i = runs["detached"], runs["inline"]
            row(
                f"jobs running at once on one box, {live['jobs']} jobs, QSTASH_PLAN={plan}:"
                " detached",
                d["peak_running"],
                f"inline {i['peak_running']}",
                ">= 200" if plan == "free" else "",
            )
            if "drain_seconds" in d:
                inline_drain = i["drain_seconds"] or f"not drained in {i['sampled_seconds']} s"
                row(
                    f"seconds to drain {live['jobs']} jobs, QSTASH_PLAN={plan}: detached",
                    d["drain_seconds"],
                    f"inline {inline_drain}",
                )
                dm, im = d["qstash_messages_per_job"], i["qstash_messages_per_job"]
                inline_msgs = (
                    f"inline {im['deliveries']} ({im['to_worker']} + {im['other']})"
                    if i["all_terminal"]
                    else f"inline {im['to_worker']} published (not drained)"
                )
                row(
                    f"QStash messages per job, no waits, QSTASH_PLAN={plan}: detached"
                    " (publishes to the worker + other)",
                    f"{dm['deliveries']} ({dm['to_worker']} + {dm['other']})",
                    inline_msgs,
                    "1",
                )
    queue = results.get("queue_eta")
    if queue:
        acc = queue["accuracy"]
        row(
            f"queue ETA error at submit, p50 / p90 % ({acc['measured']} waits, "
            f"{acc['slots']} slots)",
            f"{acc['eta_error_pct']['p50']} / {acc['eta_error_pct']['p90']}",
            "",
            "p50 <= 25",
        )
        if "qstash_messages_per_job" in acc:
            dm, im = acc["qstash_messages_per_job"], queue["inline"]["qstash_messages_per_job"]
            row(
                f"QStash messages per job with waits ({acc['waited']} of {acc['jobs']} waited for"
                f" {acc['slots']} slots): detached (per waiting job)",
                f"{dm['deliveries']} ({acc['qstash_messages_per_waiting_job']})",
                f"inline {im['deliveries']} (flow control holds the waits)",
                "1 per job that never waited",
            )
        row(
            "queue events per waiting job (jobs whose position went up)",
            f"{acc['queue_events_per_waiting_job']} ({acc['jobs_whose_position_went_up']})",
            "",
            "0 went up",
        )
        for cost in queue["update_cost"]:
            row(
                f"queue update, {cost['waiters']} waiters: Redis commands (round trips)",
                f"{cost['commands']} ({cost['round_trips']})",
                "",
                "bounded",
            )
    return rows


def _service_rows(results: dict[str, Any]) -> Rows:
    rows: Rows = []

    def row(figure: str, ours: Any, baseline: Any = "", target: Any = "") -> None:
        rows.append((figure, str(ours), str(baseline), str(target)))

    k = results.get("cancel", {})
    if k:
        row(
            "cancel to provider close p50 / p99 ms (jobs)",
            f"{k['ms']['p50']} / {k['ms']['p99']} ({k['ms']['n']}/{k['jobs']})",
            "",
            "p99 <= 1000",
        )
    s = results.get("submit", {})
    if s:
        row(
            "submit server-side p50 / p99 ms, one at a time",
            f"{s['server_ms_one_at_a_time']['p50']} / {s['server_ms_one_at_a_time']['p99']}",
            "",
            "p50 <= 10",
        )
        row(
            "submit server-side p50 / p99 ms, 32 clients",
            f"{s['server_ms']['p50']} / {s['server_ms']['p99']}",
            f"no-op route {s['noop_ms']['p50']} / {s['noop_ms']['p99']}",
            "",
        )
        row("end-to-end jobs/s (instant LLM)", s["jobs_per_second"], "", ">= 200")
    for name, d in results.get("concurrency", {}).items():
        row(
            f"live jobs per worker ({name}), RSS MB",
            f"{d['max_live_jobs']}, {d['rss_mb_at_max']}",
            "",
            ">= 1000 at <= 1024 MB",
        )
    rows += _scale_rows(results)
    tok = results.get("token_cpu")
    if tok:
        row(
            "worker CPU per streamed token, us (lib.llm + handler + JobEvents + Redis; gevent)",
            tok["worker/gevent"]["cpu_us_per_token_p50"],
            f"read only: SDK models {tok['sdk-models/gevent']['cpu_us_per_token_p50']}"
            f", raw lines {tok['raw-lines/gevent']['cpu_us_per_token_p50']}",
            "<= 60",
        )
        row(
            "worker CPU per streamed token, us (threads)",
            tok["worker/threads"]["cpu_us_per_token_p50"],
            "",
            "<= 60",
        )
        row(
            "read only, paced at the flush cadence, us per token",
            tok["raw-lines-paced/gevent"]["cpu_us_per_token_p50"],
            f"raw lines {tok['raw-lines/gevent']['cpu_us_per_token_p50']}"
            f" (x{tok['paced_vs_raw_lines']})",
            "",
        )
    parse = results.get("llm_parse")  # results files from before the token section
    if parse:
        row(
            "worker CPU per streamed token, us (read only)",
            parse["raw_lines"]["cpu_us_per_token"],
            f"SDK models {parse['sdk_models']['cpu_us_per_token']} (x{parse['ratio']})",
            "",
        )
    for module, d in results.get("cold_start", {}).items():
        if module == "bare":
            continue
        row(
            f"cold import {module} ms (first response)",
            f"{d['import_ms_p50']} ({d['first_response_ms_p50']})",
            f"bare Flask {results['cold_start']['bare']['import_ms_p50']} (x{d['import_vs_bare']})",
            "<= 300",
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The same rows as a Markdown table, for docs/performance.md."""
    rows = _streaming_rows(results) + _service_rows(results)
    lines = ["| figure | ours | original design (ratio) | target |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(cell.replace('|', '/') for cell in row)} |" for row in rows]
    return "\n".join(lines)


def table(results: dict[str, Any]) -> str:
    rows = _streaming_rows(results) + _service_rows(results)
    widths = [
        max(len(r[i]) for r in [*rows, ("figure", "ours", "baseline", "target")]) for i in range(4)
    ]
    lines = []
    for r in [("figure", "ours", "baseline (ratio)", "target"), *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)))
    return "\n".join(lines)
