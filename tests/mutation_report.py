"""`make mutation`'s report: mutmut's results (mutants/**/*.py.meta) as counts per module and the survivors' diffs.

    python tests/mutation_report.py [OUT_DIR]      # default results/mutation; run from the repository root

Writes OUT_DIR/summary.md: per module, mutants killed, survived, timed out, without a test that calls
them, and equivalent (the survivors that OUT_DIR/justified.md names, each with its reason), then the
diff of every survivor not justified. A justified mutant that no longer survives (a test now kills
it, or the code changed) is listed as stale, so justified.md cannot drift from the code.
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code

COLUMNS = ("killed", "survived", "equivalent", "timeout", "no tests", "not checked", "other")
JUSTIFIED = re.compile(r"^[-*] `([\w.]+__mutmut_\d+)`", re.M)  # "- `we.core.x.x_f__mutmut_3`: reason"


def read_results(root: Path) -> dict[str, tuple[Path, str]]:
    """Every mutant's (source file, status), from the .meta files mutmut writes beside the mutated copy."""
    found = {}
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        source = meta.relative_to(root / "mutants").with_suffix("")
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            found[name] = (source, status_by_exit_code[code])
    return found


def column(status: str, name: str, equivalent: set[str]) -> str:
    if status == "survived" and name in equivalent:
        return "equivalent"
    if status in ("killed", "caught by type check"):
        return "killed"
    return status if status in COLUMNS else "other"


def table(results: dict[str, tuple[Path, str]], equivalent: set[str]) -> list[str]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for name, (source, status) in results.items():
        counts[str(source)][column(status, name, equivalent)] += 1
    lines = ["| module | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for package in ("we/core", "we/methods"):
        modules = sorted(m for m in counts if m.startswith(package + "/"))
        total = sum((counts[m] for m in modules), Counter())
        for module, row in [(m, counts[m]) for m in modules] + [(f"**{package}/ (all)**", total)]:
            lines.append(f"| {module} | " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    return lines


def main(out: Path) -> None:
    root = Path.cwd()
    results = read_results(root)
    if not results:
        raise SystemExit("no mutmut results under mutants/: run `mutmut run` first (make mutation)")
    justified_file = out / "justified.md"
    equivalent = set(JUSTIFIED.findall(justified_file.read_text())) if justified_file.exists() else set()
    survivors = sorted(n for n, (_, s) in results.items() if s == "survived" and n not in equivalent)
    stale = sorted(n for n in equivalent if results.get(n, (None, "gone"))[1] != "survived")
    lines = ["# Mutation testing: results", "", "`make mutation` (docs/testing.md); equivalent: the survivors that",
             "justified.md names, each with its reason.", "", *table(results, equivalent), ""]
    if stale:
        lines += ["## Justified but not surviving (update justified.md)", "", *[f"- `{n}`" for n in stale], ""]
    lines += [f"## Survivors ({len(survivors)})", ""]
    for name in survivors:
        lines += [f"### `{name}`", "", "```diff", get_diff_for_mutant(name, path=results[name][0]), "```", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(lines))
    print("\n".join(table(results, equivalent)))
    print(f"{len(survivors)} survivors not justified, {len(stale)} stale justifications: {out / 'summary.md'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results/mutation"))
