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

from bench.contenders import BASELINE, CONTENDERS, FORKSERVER, REFERENCE, SEQUENTIAL_BASE
from bench.schedule import Config, Outcome, Trial
from bench.stats import Spread, percentile, ratio

# (target, met? (None: not measured, its trials failed), the numbers behind the verdict)
Verdict = tuple[str, bool | None, str]

# Issue 11's targets.  The three syncmon paths the issue judges, with the most
# their W1 p50 may be as a multiple of the floor's (REFERENCE): wait() has no
# thread hop the floor lacks, the others one each (future callback, Popen layer).
LATENCY_LIMITS = {"syncmon.wait": 1.15, "syncmon.Popen": 1.3, "syncmon.future": 1.3}
ISSUE_PATHS = tuple(LATENCY_LIMITS)
W2_LIMIT = 1.0  # × the best non-syncmon contender of the same run
SEQUENTIAL_PATH, SEQUENTIAL_LIMIT = "syncmon.wait", 1.1  # CPU per child × SEQUENTIAL_BASE
IDLE_LIMIT_S = 1e-3  # CPU seconds per second: 0.1 % of a core, the measuring thread's own noise
FUTURES, THREADS = "syncmon.future", "syncmon.wait"
DRAIN_LIMIT = 1.3  # futures' time to the last death × the floor's, at the largest burst
FUTURES_GROWTH_LIMIT = 1.1  # "cost per death stays flat"
THREADS_GROWTH_LIMIT = 1.0  # "grows at most linearly"
MEMORY_LIMIT = 2.0  # futures' bytes per watched child × the floor's
ISSUE_SIZES = (1000, 10000)  # the burst sizes the issue judges growth between

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
        # Issue 11 judges against the pure-Python floor: ratios are to it when it ran.
        self.baseline = REFERENCE if REFERENCE in self.names else BASELINE
        self.latency = latency_figures(outcomes)
        self.throughput = spreads(outcomes, "throughput", "per_s")
        self.cpu_per_child = spreads(outcomes, "throughput", "cpu_per_child_s")
        self.sequential_cpu = spreads(outcomes, "sequential", "cpu_per_child_s")
        self.sequential_wall = spreads(outcomes, "sequential", "wall_per_child_s")
        self.idle = spreads(outcomes, "idle", "cpu_per_s")
        self.sizes = burst_sizes(outcomes)
        self.burst = {n: spreads(outcomes, f"burst/{n}", "all_seen_s") for n in self.sizes}
        self.burst_rss = {n: spreads(outcomes, f"burst/{n}", "peak_rss_delta_bytes") for n in self.sizes}
        self.burst_rss_per_child = {n: {c: _scaled(s, 1 / n) for c, s in d.items()} for n, d in self.burst_rss.items()}
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

    def sequential_table(self) -> str:
        base = self.sequential_cpu.get(SEQUENTIAL_BASE)
        rows = []
        for name in self._rows(self.sequential_cpu):
            s = self.sequential_cpu[name]
            rows.append(
                [
                    name,
                    fmt_time_spread(s),
                    fmt_ratio(ratio(s.median, base.median) if base else math.nan),
                    fmt_time_spread(self.sequential_wall[name]),
                ]
            )
        headers = ["contender", "parent CPU per child: median [IQR]", f"× {SEQUENTIAL_BASE}", "wall per child"]
        return markdown_table(headers, rows)

    def _burst_names(self) -> list[str]:
        present = set().union(*(self.burst[n] for n in self.sizes))
        return [n for n in self.names if n in present]

    def burst_time_table(self) -> str:
        headers = ["contender"]
        for n in self.sizes:
            headers += [f"n={n}: median [IQR]", f"× {self.baseline}"]
        headers += ["growth exponent: time", "CPU", "between n="]
        rows = []
        for name in self._burst_names():
            row = [name]
            for n in self.sizes:
                s, base = self.burst[n].get(name), self.burst[n].get(self.baseline)
                row += [
                    fmt_time_spread(s) if s else "-",
                    fmt_ratio(ratio(s.median, base.median)) if s and base else "-",
                ]
            span = self.span(name)
            rows.append(
                row
                + [
                    _fmt_exponent(self.growth_exponent(name)),
                    _fmt_exponent(self.growth_exponent(name, "cpu")),
                    f"{span[0]}–{span[1]}" if span else "-",
                ]
            )
        return markdown_table(headers, rows)

    def burst_cost_table(self) -> str:
        big = self.sizes[-1]
        headers = ["contender", "peak RSS Δ", "per child", "CPU while alive", "CPU from release to last death"]
        rows = [
            [
                name,
                _median(self.burst_rss[big], name, lambda b: f"{b / 2**20:.1f} MiB"),
                _median(self.burst_rss_per_child[big], name, fmt_bytes),
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
        span = self.span(name)
        if span is None:
            return math.nan
        spreads = self.burst if figure == "time" else self.burst_reap_cpu
        small, big = span
        at_small, at_big = spreads[small][name], spreads[big][name]
        if at_small.median <= 0:
            return math.nan
        return math.log(at_big.median / at_small.median) / math.log(big / small)

    def span(self, name: str) -> tuple[int, int] | None:
        """The smallest and largest burst sizes at which ``name`` has figures.

        Not simply the sizes run: a contender left out of the largest size (or
        failing there) still shows its growth over the sizes it did reach, and
        every verdict names the sizes it was judged on.
        """
        have = [n for n in self.sizes if name in self.burst[n]]
        return (have[0], have[-1]) if len(have) >= 2 else None

    def exponent_bounds(self, name: str) -> tuple[float, float]:
        """The growth exponents the quartiles allow (small q3 -> big q1, small q1 -> big q3):
        how much of the median's exponent is noise."""
        span = self.span(name)
        assert span is not None, "only called with a growth exponent"
        small, big = span
        at_small, at_big = self.burst[small][name], self.burst[big][name]
        scale = math.log(big / small)
        return math.log(at_big.q1 / at_small.q3) / scale, math.log(at_big.q3 / at_small.q1) / scale

    # ------------------------------------------------------------------ targets

    def _syncmon(self, figures: dict[str, Any]) -> list[str]:
        return [n for n in self.names if n.startswith("syncmon") and n in figures]

    def targets(self) -> list[Verdict]:
        """Every target of issue 11 whose contenders ran, judged on this run alone."""
        return [
            *self._latency_targets(),
            *self._throughput_targets(),
            *self._sequential_targets(),
            *self._idle_targets(),
            *self._burst_targets(),
        ]

    def _latency_targets(self) -> Iterator[Verdict]:
        floor = self.latency.get(REFERENCE)
        if floor is None:
            return
        for name, limit in LATENCY_LIMITS.items():
            if name not in self.latency:
                continue
            p50 = self.latency[name].p50
            r = p50 / floor.p50
            yield (
                f"{name}: W1 p50 ≤ {limit:g}× the floor ({REFERENCE})",
                r <= limit,
                f"{fmt_time(p50)} / {fmt_time(floor.p50)} = {r:.2f}×",
            )

    def best_peer(self) -> str | None:
        """The non-syncmon contender with the highest W2 median in this run."""
        peers = {n: s for n, s in self.throughput.items() if not n.startswith("syncmon")}
        return max(peers, key=lambda n: peers[n].median) if peers else None

    def _throughput_targets(self) -> Iterator[Verdict]:
        best = self.best_peer()
        if best is None:
            return
        top = self.throughput[best].median
        for name in ISSUE_PATHS:
            if name not in self.throughput:
                continue
            r = self.throughput[name].median / top
            yield (
                f"{name}: W2 ≥ {W2_LIMIT:g}× the best Python contender (this run: {best})",
                r >= W2_LIMIT,
                f"{fmt_num(self.throughput[name].median)} / {fmt_num(top)} children/s = {r:.2f}×",
            )

    def _sequential_targets(self) -> Iterator[Verdict]:
        base, ours = self.sequential_cpu.get(SEQUENTIAL_BASE), self.sequential_cpu.get(SEQUENTIAL_PATH)
        if base is None or ours is None:
            return
        r = ours.median / base.median
        yield (
            f"{SEQUENTIAL_PATH}: sequential parent CPU per child ≤ {SEQUENTIAL_LIMIT:g}× {SEQUENTIAL_BASE}",
            r <= SEQUENTIAL_LIMIT,
            f"{fmt_time_spread(ours)} / {fmt_time_spread(base)} = {r:.2f}×",
        )

    def _idle_targets(self) -> Iterator[Verdict]:
        for name in self._syncmon(self.idle):
            s = self.idle[name]
            yield (
                f"{name}: no CPU while children merely run (≤ {IDLE_LIMIT_S * 1e3:g} ms/s)",
                s.median <= IDLE_LIMIT_S,
                f"{s.median * 1e3:.3f} ms/s median, max {s.high * 1e3:.3f}",
            )

    @staticmethod
    def _sizes_note(small: int, big: int) -> str:
        """Said beside every burst verdict judged on other sizes than the issue's."""
        if (small, big) == ISSUE_SIZES:
            return ""
        return f" [judged at n={small}→{big}; issue 11 asks {ISSUE_SIZES[0]}→{ISSUE_SIZES[1]}: `--many`]"

    def _planned(self, name: str, group: str) -> bool:
        """Whether a trial of ``name`` in ``group`` was run (so missing figures mean it failed)."""
        return any(o.trial.contender == name and o.trial.group == group for o in self.outcomes)

    def _burst_targets(self) -> Iterator[Verdict]:
        if not self.sizes:
            return
        small, big = self.sizes[0], self.sizes[-1]
        note = self._sizes_note(small, big)
        yield from self._at_largest(
            f"{FUTURES}: drain of n={big} deaths ≤ {DRAIN_LIMIT:g}× the floor{note}",
            self.burst[big],
            DRAIN_LIMIT,
            fmt_time_spread,
        )
        yield from self._growth_target(FUTURES, FUTURES_GROWTH_LIMIT, "cost per death stays flat")
        yield from self._growth_target(THREADS, THREADS_GROWTH_LIMIT, "time grows at most linearly")
        yield from self._at_largest(
            f"{FUTURES}: memory per watched child (peak RSS Δ / n at n={big}) ≤ {MEMORY_LIMIT:g}× the floor's{note}",
            self.burst_rss_per_child[big],
            MEMORY_LIMIT,
            lambda s: fmt_bytes(s.median),
        )

    def _at_largest(
        self, what: str, figures: dict[str, Spread], limit: float, fmt: Callable[[Spread], str]
    ) -> Iterator[Verdict]:
        """Futures against the floor at the largest burst: a ratio of medians ≤ limit."""
        group = f"burst/{self.sizes[-1]}"
        ours, floor = figures.get(FUTURES), figures.get(REFERENCE)
        if ours and floor:
            r = ratio(ours.median, floor.median)
            yield what, r <= limit, f"{fmt(ours)} / {fmt(floor)} = {fmt_ratio(r)}"
        elif self._planned(FUTURES, group) and self._planned(REFERENCE, group):
            yield what, None, f"no figures at {group}: see Failures"

    def _growth_target(self, name: str, limit: float, what: str) -> Iterator[Verdict]:
        k, span = self.growth_exponent(name), self.span(name)
        if span is None or math.isnan(k):
            if len(self.sizes) >= 2 and self._planned(name, f"burst/{self.sizes[-1]}"):
                yield (
                    f"{name}: {what}, growth exponent ≤ {limit:g}",
                    None,
                    f"no figures at two burst sizes of {self.sizes}: see Failures",
                )
            return
        low, high = self.exponent_bounds(name)
        small, big = span
        note = self._sizes_note(small, big)
        # Met if the median's exponent is within the limit, or if the quartiles
        # cannot tell it from the limit (then said so): one noisy round at either
        # size must not decide the verdict, nor hide a real excess.
        met = k <= limit or low <= limit
        slack = " (only within the quartiles)" if met and k > limit else ""
        yield (
            f"{name}: {what}, growth exponent ≤ {limit:g}{note}",
            met,
            f"n={small}: {fmt_time(self.burst[small][name].median)}, n={big}: "
            f"{fmt_time(self.burst[big][name].median)}, exponent {k:.2f}{slack} (quartiles allow "
            f"{low:.2f}–{high:.2f}; {REFERENCE}: {_fmt_exponent(self.growth_exponent(REFERENCE))})",
        )

    # ----------------------------------------------------------------- findings

    def findings(self) -> list[str]:
        """What issue 11 asks to measure without a target: the fork server's effect."""
        lines = []
        server, plain = self.throughput.get(FORKSERVER), self.throughput.get(THREADS)
        if server and plain:
            if server.q1 > plain.q3:
                verdict = "raises W2"
            elif server.q3 < plain.q1:
                verdict = "lowers W2"
            else:
                verdict = "does not change W2 beyond the quartiles"
            lines.append(
                f"`{FORKSERVER}` {verdict} on {os.cpu_count()} cores over `{THREADS}`: "
                f"{fmt_spread(server)} / {fmt_spread(plain)} children/s = "
                f"{fmt_ratio(ratio(server.median, plain.median))}"
            )
        seq_server, seq_base = self.sequential_cpu.get(FORKSERVER), self.sequential_cpu.get(SEQUENTIAL_BASE)
        if seq_server and seq_base:
            lines.append(
                f"`{FORKSERVER}` sequential parent CPU per child (the server's own CPU not counted): "
                f"{fmt_time_spread(seq_server)} = {fmt_ratio(ratio(seq_server.median, seq_base.median))} "
                f"`{SEQUENTIAL_BASE}`"
            )
        return lines

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
        if "sequential" in c.workloads and self.sequential_cpu:
            parts += [
                "",
                f"### (b') One child at a time ({c.sequential_rounds} rounds × {c.sequential_children} "
                "`true`, spawn then wait, in the calling thread; lower is better)",
                "",
                "Parent CPU: process_time() of every thread of the trial process over the loop, / n.",
                "",
                self.sequential_table(),
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
                f"Cost at n={self.sizes[-1]} (medians): peak RSS minus RSS before spawning (and per child: "
                "a handle with its pidfd and future, for syncmon.future; a few MiB of it are fixed, so the "
                "per-child figure means something only at thousands of children); CPU of the whole "
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
        findings = self.findings()
        if findings:
            parts += ["", "### Findings (measured, no target)", ""] + [f"- {f}" for f in findings]
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
                "sequential_cpu_per_child_s": {n: spread_dict(s) for n, s in self.sequential_cpu.items()},
                "burst_all_seen_s": {str(n): {c: spread_dict(s) for c, s in d.items()} for n, d in self.burst.items()},
                "burst_peak_rss_delta_bytes": {
                    str(n): {c: spread_dict(s) for c, s in d.items()} for n, d in self.burst_rss.items()
                },
                "idle_cpu_per_s": {n: spread_dict(s) for n, s in self.idle.items()},
            },
            "targets": [{"target": t, "met": m, "numbers": x} for t, m, x in self.targets()],
            "findings": self.findings(),
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


def _scaled(s: Spread, factor: float) -> Spread:
    return Spread(s.median * factor, s.q1 * factor, s.q3 * factor, s.low * factor, s.high * factor, s.count)


def fmt_bytes(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value >= 2**20:
        return f"{value / 2**20:.1f} MiB"
    if value >= 2**10:
        return f"{value / 2**10:.1f} KiB"
    return f"{value:.0f} B"


def _median(spreads: dict[str, Spread], name: str, fmt: Callable[[float], str]) -> str:
    return fmt(spreads[name].median) if name in spreads else "-"


def _fmt_exponent(k: float) -> str:
    return "-" if math.isnan(k) else f"{k:.2f}"


def _verdict(met: bool | None) -> str:
    if met is None:
        return "**not measured**"
    return "**met**" if met else "**NOT met**"
