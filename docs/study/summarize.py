"""Tables of the issue-14 study from its convergence.json files (markdown on stdout).

    .venv/bin/python docs/study/summarize.py [/work/study]

Per row: seeds, final val_loss of both arms, the paired relative gain with its 95% CI (or the
n=1 value), whether LayerSync is lower at the last two evaluations in every seed, and (Stage B)
the final FID/KID gains against twice their sampling noise. CPU time from cpu_times.txt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from layersync.paired import from_dict


def _gain(d: dict) -> str:
    e = from_dict(d)
    if e.n < 2:
        return f"{100 * e.mean:+.2f}% (n=1)"
    verdict = "" if e.detectable else ", no detectable difference"
    return f"{100 * e.mean:+.2f}% [{100 * e.lo:+.2f}, {100 * e.hi:+.2f}] (n={e.n}{verdict})"


def rows(stage: Path) -> list[str]:
    out = [
        "| setting | seeds | vanilla val_loss | LayerSync val_loss | paired gain (95% CI) "
        "| lower at last two evals, every seed |",
        "|---|---|---|---|---|---|",
    ]
    for f in sorted(stage.glob("*/convergence.json")):
        r = json.loads(f.read_text())
        s, p = r["summary"], r["summary"]["paired"]
        out.append(
            f"| {f.parent.name} | {','.join(map(str, r['seeds']))} | {s['vanilla_final']:.4f} "
            f"| {s['layersync_final']:.4f} | {_gain(p['final_relative_gain'])} "
            f"| {'yes' if p['better_at_last_two_in_every_seed'] else 'no'} |"
        )
        for name, m in (r.get("final_eval") or {}).get("metrics", {}).items():
            vals = m["values"]
            v = sum(x[0] for x in vals["vanilla"].values()) / len(vals["vanilla"])
            ls = sum(x[0] for x in vals["layersync"].values()) / len(vals["layersync"])
            twice = "exceeds" if m["exceeds_twice_noise"] else "below"
            out.append(
                f"| {f.parent.name}: final {name} ({r['final_eval']['overrides'][1]}) | "
                f"{','.join(vals['vanilla'])} | {v:.4g} | {ls:.4g} | "
                f"{from_dict(m['gain']).describe()} | noise {m['sampling_noise']:.3g}: {twice} "
                "2x noise |"
            )
    return out


def cpu(study: Path) -> list[str]:
    path = study / "cpu_times.txt"
    if not path.is_file():
        return []
    total, lines = 0.0, []
    for line in path.read_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        if "user_s" in fields:
            seconds = float(fields["user_s"]) + float(fields["sys_s"])
            total += seconds
            lines.append(f"| {line.split()[0]} | {seconds / 60:.1f} |")
    return ["| command | CPU min |", "|---|---|", *lines, f"| total | {total / 60:.1f} |"]


def main() -> None:
    study = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/study")
    for stage in ("A", "B"):
        if (study / stage).is_dir():
            print(f"\n### Stage {stage}\n")
            print("\n".join(rows(study / stage)))
    print("\n### CPU time\n")
    print("\n".join(cpu(study)))


if __name__ == "__main__":
    main()
