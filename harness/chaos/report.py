"""The table a chaos run prints: operations, faults, violations and the worst figures."""

from __future__ import annotations

from harness.chaos.checker import Report
from harness.chaos.history import OUTCOMES, History

DEFAULT_SHOWN = 20  # violations listed in full under the table


def format_report(history: History, report: Report, *, shown: int = DEFAULT_SHOWN) -> str:
    meta = history.meta
    summary = report.summary
    bounds = report.bounds
    lines = [
        f"chaos run: seed {meta.seed}, {meta.seconds:g} s of load and faults, environment "
        f"{meta.environment}",
        f"instances: {', '.join(meta.instances)}",
        f"faults enabled: {', '.join(meta.faults) or 'none'}",
    ]
    if meta.skipped_faults:
        lines.append(f"faults the harness does not offer yet: {', '.join(meta.skipped_faults)}")
    lines += [
        "",
        f"{'operations':<24}{'ok':>8}{'fail':>8}{'info':>8}",
    ]
    for label in sorted(summary.operations):
        counts = summary.operations[label]
        lines.append(f"  {label:<22}" + "".join(f"{counts[o]:>8}" for o in OUTCOMES))
    with_token = sum(1 for op in history.operations if "consistency_token" in op.args)
    lines.append(f"  reads with a consistency token: {with_token}")
    lines += ["", f"{'faults applied':<32}{'count':>8}"]
    if not summary.faults:
        lines.append("  (none)")
    for name in sorted(summary.faults):
        lines.append(f"  {name:<30}{summary.faults[name]:>8}")
    failed = sum(1 for record in history.faults if record.error)
    if failed:
        lines.append(f"  ({failed} raised an error while applied or healed: see the history)")
    lines += ["", f"{'violations':<32}{'count':>8}"]
    for kind, count in summary.violations.items():
        lines.append(f"  {kind:<30}{count:>8}")
    watch = "n/a" if summary.worst_watch_lag is None else f"{summary.worst_watch_lag:.3f} s"
    lines += [
        "",
        f"worst staleness seen          {summary.worst_staleness:8.3f} s "
        f"(bound {bounds.staleness:g} s)",
        f"worst revocation lag          {summary.worst_revocation_lag:8.3f} s "
        f"(bound {bounds.propagation:g} s)",
        f"worst watch lag               {watch:>10} (bound {bounds.watch:g} s; "
        "acknowledgement to a live subscriber's event)",
        f"write unavailability          {summary.write_unavailability:8.3f} s "
        "(longest interval with writes attempted and none acknowledged)",
    ]
    if report.violations:
        lines += ["", f"violations (first {min(shown, len(report.violations))}):"]
        for violation in report.violations[:shown]:
            lines.append(f"  [{violation.kind}] {violation.message}")
    lines.append("")
    lines.append("result: " + ("OK, no violation" if report.ok else "VIOLATIONS FOUND"))
    return "\n".join(lines)
