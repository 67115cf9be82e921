"""Turn trial outcomes into tables, target verdicts, JSON and (optionally) a PNG.

Every figure quoted is a median over rounds (or a percentile over all pooled
samples, for latency), printed with its spread; no single timing is ever quoted.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.contenders import BASELINE, CONTENDERS, POLLER, REFERENCE
from bench.schedule import Config, Outcome, Trial
from bench.stats import Spread, percentile, ratio

# (target, met?, the numbers behind the verdict)
Verdict = tuple[str, bool, str]

# ------------------------------------------------------------------ machine facts


def syncmon_revision() -> str:
    """The commit syncmon was measured at, and whether its files differed from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "--short", "HEAD") or "no commit"
        dirty = git("status", "--porcelain", "--", "syncmon")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{commit} + uncommitted changes" if dirty else commit


def machine_facts() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "loadavg": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "syncmon": syncmon_revision(),
    }


# ----------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Latency:
    p50: float
    p99: float
    samples: int
    round_p50: Spread


def _by_contender(outcomes: Sequence[Outcome], group: str) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.trial.group == group and outcome.ok:
            results[outcome.trial.contender].append(outcome.result)
    return results


def latency_figures(outcomes: Sequence[Outcome]) -> dict[str, Latency]:
    figures = {}
    for name, results in _by_contender(outcomes, "latency").items():
        pooled = [x for r in results for x in r["latency_s"]]
        figures[name] = Latency(
            p50=percentile(pooled, 50),
            p99=percentile(pooled, 99),
            samples=len(pooled),
            round_p50=Spread.of([percentile(r["latency_s"], 50) for r in results]),
        )
    return figures


def spreads(outcomes: Sequence[Outcome], group: str, key: str) -> dict[str, Spread]:
    return {name: Spread.of([r[key] for r in results]) for name, results in _by_contender(outcomes, group).items()}


def burst_sizes(outcomes: Sequence[Outcome]) -> list[int]:
    return sorted({o.trial.params["n"] for o in outcomes if o.trial.workload == "burst"})


# -------------------------------------------------------------------- formatting


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds < 1e-3:
        return 1e6, "µs"
    if seconds < 1:
        return 1e3, "ms"
    return 1.0, "s"


def fmt_time(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    scale, unit = _time_unit(seconds)
    return f"{_sig3(seconds * scale)} {unit}"


def fmt_num(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def fmt_spread(s: Spread, fmt: Callable[[float], str] = fmt_num) -> str:
    """``median [q1–q3]``, the quartiles in the median's unit."""
    return f"{fmt(s.median)} [{fmt(s.q1)}–{fmt(s.q3)}]"


def _sig3(value: float) -> str:
    """Three significant digits, never in e-notation."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def fmt_time_spread(s: Spread) -> str:
    scale, unit = _time_unit(s.median)
    return f"{_sig3(s.median * scale)} {unit} [{_sig3(s.q1 * scale)}–{_sig3(s.q3 * scale)}]"


def fmt_ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}×"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


# --------------------------------------------------------------------- the report


class Report:
    def __init__(self, config: Config, outcomes: Sequence[Outcome], skipped: dict[str, str]) -> None:
        self.config = config
        self.outcomes = outcomes
        self.skipped = skipped
        self.names = [n for n in config.contenders]
        # Ratios are against syncmon when it ran, else against the pure-Python reference.
        self.baseline = BASELINE if BASELINE in self.names else REFERENCE
        self.latency = latency_figures(outcomes)
        self.throughput = spreads(outcomes, "throughput", "per_s")
        self.cpu_per_child = spreads(outcomes, "throughput", "cpu_per_child_s")
        self.idle = spreads(outcomes, "idle", "cpu_per_s")
        self.sizes = burst_sizes(outcomes)
        self.burst = {n: spreads(outcomes, f"burst/{n}", "all_seen_s") for n in self.sizes}
        self.burst_rss = {n: spreads(outcomes, f"burst/{n}", "peak_rss_delta_bytes") for n in self.sizes}
        self.burst_alive_cpu = {n: spreads(outcomes, f"burst/{n}", "alive_cpu_per_s") for n in self.sizes}
        self.burst_reap_cpu = {n: spreads(outcomes, f"burst/{n}", "reap_cpu_s") for n in self.sizes}

    # ------------------------------------------------------------------- tables

    def _rows(self, figures: dict[str, Any]) -> list[str]:
        return [n for n in self.names if n in figures]

    def latency_table(self) -> str:
        base = self.latency.get(self.baseline)
        rows = []
        for name in self._rows(self.latency):
            f = self.latency[name]
            rows.append(
                [
                    name,
                    fmt_time(f.p50),
                    fmt_time(f.p99),
                    fmt_time_spread(f.round_p50),
                    fmt_ratio(ratio(f.p50, base.p50) if base else math.nan),
                    str(f.samples),
                ]
            )
        headers = ["contender", "p50", "p99", "p50 per round: median [IQR]", f"p50 × {self.baseline}", "samples"]
        return markdown_table(headers, rows)

    def throughput_table(self) -> str:
        base = self.throughput.get(self.baseline)
        rows = []
        for name in self._rows(self.throughput):
            s = self.throughput[name]
            rows.append(
                [
                    name,
                    fmt_spread(s),
                    fmt_ratio(ratio(s.median, base.median) if base else math.nan),
                    fmt_time(self.cpu_per_child[name].median),
                    f"{fmt_num(s.low)}–{fmt_num(s.high)}",
                ]
            )
        headers = ["contender", "children/s: median [IQR]", f"× {self.baseline}", "CPU per child", "min–max"]
        return markdown_table(headers, rows)

    def _burst_names(self) -> list[str]:
        present = set().union(*(self.burst[n] for n in self.sizes))
        return [n for n in self.names if n in present]

    def burst_time_table(self) -> str:
        headers = ["contender"]
        for n in self.sizes:
            headers += [f"n={n}: median [IQR]", f"× {self.baseline}"]
        headers += ["growth exponent: time", "CPU"]
        rows = []
        for name in self._burst_names():
            row = [name]
            for n in self.sizes:
                s, base = self.burst[n].get(name), self.burst[n].get(self.baseline)
                row += [
                    fmt_time_spread(s) if s else "-",
                    fmt_ratio(ratio(s.median, base.median)) if s and base else "-",
                ]
            rows.append(
                row + [_fmt_exponent(self.growth_exponent(name)), _fmt_exponent(self.growth_exponent(name, "cpu"))]
            )
        return markdown_table(headers, rows)

    def burst_cost_table(self) -> str:
        big = self.sizes[-1]
        headers = ["contender", "peak RSS Δ", "CPU while alive", "CPU from release to last death"]
        rows = [
            [
                name,
                _median(self.burst_rss[big], name, lambda b: f"{b / 2**20:.1f} MiB"),
                _median(self.burst_alive_cpu[big], name, lambda c: f"{c * 1e3:.2f} ms/s"),
                _median(self.burst_reap_cpu[big], name, fmt_time),
            ]
            for name in self._burst_names()
        ]
        return markdown_table(headers, rows)

    def idle_table(self) -> str:
        base = self.idle.get(self.baseline)
        rows = []
        for name in self._rows(self.idle):
            s = self.idle[name]
            rows.append(
                [
                    name,
                    f"{s.median * 1e3:.3f} [{s.q1 * 1e3:.3f}–{s.q3 * 1e3:.3f}]",
                    f"{s.high * 1e3:.3f}",
                    f"{s.median * 100:.3f} %",
                    fmt_ratio(ratio(s.median, base.median) if base else math.nan),
                ]
            )
        headers = ["contender", "CPU ms per s: median [IQR]", "max", "of one core", f"× {self.baseline}"]
        return markdown_table(headers, rows)

    def growth_exponent(self, name: str, figure: str = "time") -> float:
        """k in figure ∝ n^k between the smallest and largest burst: 1 is linear.

        ``figure`` is "time" (release to last death seen) or "cpu" (this process's
        CPU over the same span): wall time includes the kernel ending n processes
        on few cores, CPU is the waiting process's own work alone.
        """
        if len(self.sizes) < 2:
            return math.nan
        spreads = self.burst if figure == "time" else self.burst_reap_cpu
        small, big = self.sizes[0], self.sizes[-1]
        at_small, at_big = spreads[small].get(name), spreads[big].get(name)
        if at_small is None or at_big is None or at_small.median <= 0:
            return math.nan
        return math.log(at_big.median / at_small.median) / math.log(big / small)

    # ------------------------------------------------------------------ targets

    def _syncmon(self, figures: dict[str, Any]) -> list[str]:
        return [n for n in self.names if n.startswith("syncmon") and n in figures]

    def targets(self) -> list[Verdict]:
        """Every target of issue 4, judged for every syncmon contender that ran."""
        return [
            *self._latency_targets(),
            *self._throughput_targets(),
            *self._idle_targets(),
            *self._growth_targets(),
        ]

    def _latency_targets(self) -> Iterator[Verdict]:
        poll, ref = self.latency.get(POLLER), self.latency.get(REFERENCE)
        for name in self._syncmon(self.latency):
            syn = self.latency[name]
            if poll:
                r = poll.p50 / syn.p50
                yield (
                    f"{name}: latency p50 ≥ 20× lower than {POLLER}",
                    r >= 20,
                    f"{fmt_time(poll.p50)} / {fmt_time(syn.p50)} = {r:.0f}×",
                )
            if ref:
                r = syn.p50 / ref.p50
                yield (
                    f"{name}: latency p50 within 1.5× of {REFERENCE}",
                    r <= 1.5,
                    f"{fmt_time(syn.p50)} / {fmt_time(ref.p50)} = {r:.2f}×",
                )

    def _throughput_targets(self) -> Iterator[Verdict]:
        peers = {n: s for n, s in self.throughput.items() if not n.startswith("syncmon")}
        if not peers:
            return
        best = max(peers, key=lambda n: peers[n].median)
        for name in self._syncmon(self.throughput):
            r = self.throughput[name].median / peers[best].median
            yield (
                f"{name}: spawn-and-reap ≥ 0.9× the best peer ({best})",
                r >= 0.9,
                f"{fmt_num(self.throughput[name].median)} / {fmt_num(peers[best].median)} children/s = {r:.2f}×",
            )

    def _idle_targets(self) -> Iterator[Verdict]:
        for name in self._syncmon(self.idle):
            s = self.idle[name]
            # 1 ms per s is 0.1 % of a core: about the noise floor of the measuring thread itself.
            yield (
                f"{name}: no CPU while children merely run (≤ 1 ms/s)",
                s.median <= 1e-3,
                f"{s.median * 1e3:.3f} ms/s median, max {s.high * 1e3:.3f}",
            )

    def _growth_targets(self) -> Iterator[Verdict]:
        if len(self.sizes) < 2:
            return
        small, big = self.sizes[0], self.sizes[-1]
        for name in self._syncmon(self.burst[big]):
            k = self.growth_exponent(name)
            if math.isnan(k):
                continue
            at_small, at_big = self.burst[small][name], self.burst[big][name]
            # The exponent the quartiles would allow: how much of k is noise.
            low = math.log(at_big.q1 / at_small.q3) / math.log(big / small)
            high = math.log(at_big.q3 / at_small.q1) / math.log(big / small)
            ref = self.growth_exponent(REFERENCE)
            # 1.15 leaves room for noise; a cost quadratic in n shows as k near 2.
            yield (
                f"{name}: time to learn of all n deaths grows at most linearly in n",
                k <= 1.15,
                f"n={small}: {fmt_time(at_small.median)}, n={big}: {fmt_time(at_big.median)}, "
                f"exponent {k:.2f} (quartiles allow {low:.2f}–{high:.2f}; {REFERENCE}: {_fmt_exponent(ref)})",
            )

    # ------------------------------------------------------------------- output

    def failures(self) -> list[str]:
        """Trials without figures, and trials whose contender failed after measuring."""
        lines = []
        for o in self.outcomes:
            where = f"{o.trial.group} / {o.trial.contender} / round {o.trial.round}"
            if not o.ok:
                lines.append(f"{where}: {o.result['error']}")
            if "teardown_error" in o.result:
                lines.append(f"{where}: after measuring (figures kept): {o.result['teardown_error']['error']}")
        return lines

    def markdown(self, facts: dict[str, Any], command: str) -> str:
        c = self.config
        hows = "\n".join(f"- `{n}`: {CONTENDERS[n].how}" for n in self.names)
        parts = [
            f"Command: `{command}`",
            "",
            f"Machine: {facts['cpus']} CPUs ({facts['cpu_model']}), Linux {facts['kernel']}, "
            f"{facts['implementation']} {facts['python']}; load average at start "
            f"{facts['loadavg'][0]:.2f}, at end {facts.get('loadavg_end', [math.nan])[0]:.2f}; "
            f"{facts['date_utc']} UTC; syncmon at {facts.get('syncmon', 'unknown')}.",
            "",
            "Contenders:",
            hows,
        ]
        if self.skipped:
            parts += ["", "Skipped: " + "; ".join(f"`{n}` ({why})" for n, why in self.skipped.items())]
        parts += [
            "",
            "Spread is `median [first quartile–third quartile]` over rounds; every trial runs in a fresh "
            f"process, rounds interleave the contenders. Ratios are against `{self.baseline}`.",
        ]
        if "latency" in c.workloads:
            parts += [
                "",
                f"### (a) Exit-to-wake latency ({c.latency_rounds} rounds × {c.kills} kills; lower is better)",
                "",
                "From just before `kill(SIGKILL)` of a blocked `sleep` to the waiter's return; p50/p99 over "
                "all samples pooled.",
                "",
                self.latency_table(),
            ]
        if "throughput" in c.workloads and self.throughput:
            parts += [
                "",
                f"### (b) Spawn-and-reap throughput ({c.throughput_rounds} rounds × {c.children} `true`, "
                f"≤ {c.in_flight} in flight; higher is better)",
                "",
                self.throughput_table(),
            ]
        if "burst" in c.workloads and self.sizes:
            parts += [
                "",
                f"### (c) n live children all exit at once ({c.burst_rounds} rounds per size; lower is better)",
                "",
                "Time from the `close()` that gives every `cat` EOF to the last death seen. Growth exponent "
                "k: t ∝ n^k between the smallest and largest size (1 = linear), for that time and for the "
                "process's CPU over the same span.",
                "",
                self.burst_time_table(),
                "",
                f"Cost at n={self.sizes[-1]} (medians): peak RSS minus RSS before spawning; CPU of the whole "
                "process per second while all children sit alive and every waiter is blocked; CPU from the "
                "release to the last death seen.",
                "",
                self.burst_cost_table(),
            ]
        if "idle" in c.workloads and self.idle:
            parts += [
                "",
                f"### (d) CPU while {c.idle_children} children run `sleep {c.idle_lifetime_s:g}` "
                f"({c.idle_rounds} rounds; lower is better)",
                "",
                self.idle_table(),
            ]
        verdicts = self.targets()
        if verdicts:
            parts += ["", "### Targets", ""]
            parts += [f"- {_verdict(met)} {what}: {numbers}" for what, met, numbers in verdicts]
        failures = self.failures()
        if failures:
            parts += ["", "### Failures", ""] + [f"- {f}" for f in failures]
        return "\n".join(parts) + "\n"

    def as_json(self, facts: dict[str, Any], command: str) -> dict[str, Any]:
        def spread_dict(s: Spread) -> dict[str, float]:
            return {"median": s.median, "q1": s.q1, "q3": s.q3, "min": s.low, "max": s.high, "count": s.count}

        return {
            "command": command,
            "machine": facts,
            "config": {k: v for k, v in vars(self.config).items()},
            "skipped": self.skipped,
            "baseline": self.baseline,
            "summary": {
                "latency": {
                    n: {"p50_s": f.p50, "p99_s": f.p99, "samples": f.samples, "round_p50_s": spread_dict(f.round_p50)}
                    for n, f in self.latency.items()
                },
                "throughput_per_s": {n: spread_dict(s) for n, s in self.throughput.items()},
                "burst_all_seen_s": {str(n): {c: spread_dict(s) for c, s in d.items()} for n, d in self.burst.items()},
                "burst_peak_rss_delta_bytes": {
                    str(n): {c: spread_dict(s) for c, s in d.items()} for n, d in self.burst_rss.items()
                },
                "idle_cpu_per_s": {n: spread_dict(s) for n, s in self.idle.items()},
            },
            "targets": [{"target": t, "met": m, "numbers": x} for t, m, x in self.targets()],
            "trials": [
                {
                    "group": o.trial.group,
                    "contender": o.trial.contender,
                    "round": o.trial.round,
                    "params": o.trial.params,
                    "result": o.result,
                }
                for o in self.outcomes
            ],
        }

    def plot(self, path: Path) -> bool:
        """ECDF of every contender's latency samples; False if matplotlib is missing."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        fig, ax = plt.subplots(figsize=(9.5, 5))
        for name in self._rows(self.latency):
            samples = sorted(
                x
                for o in self.outcomes
                if o.ok and o.trial.group == "latency" and o.trial.contender == name
                for x in o.result["latency_s"]
            )
            ax.step(
                [s * 1e6 for s in samples],
                [(i + 1) / len(samples) for i in range(len(samples))],
                where="post",
                label=name,
            )
        ax.set_xscale("log")
        ax.set_xlabel("exit-to-wake latency (µs, log scale)")
        ax.set_ylabel("fraction of samples ≤ x")
        ax.set_title("Child exit to waiter wake-up, all rounds pooled")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: the curves fill the axes
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return True


def load(data: dict[str, Any]) -> tuple[Report, dict[str, Any], str]:
    """Rebuild a report from the output of ``--json``: (report, machine facts, command)."""
    config = dict(data["config"])
    for key in ("gap_ms", "burst_sizes"):
        config[key] = tuple(config[key])
    outcomes = [
        Outcome(Trial(t["group"].split("/")[0], t["group"], t["contender"], t["round"], t["params"]), t["result"])
        for t in data["trials"]
    ]
    return Report(Config(**config), outcomes, data["skipped"]), data["machine"], data["command"]


def _median(spreads: dict[str, Spread], name: str, fmt: Callable[[float], str]) -> str:
    return fmt(spreads[name].median) if name in spreads else "-"


def _fmt_exponent(k: float) -> str:
    return "-" if math.isnan(k) else f"{k:.2f}"


def _verdict(met: bool) -> str:
    return "**met**" if met else "**NOT met**"
