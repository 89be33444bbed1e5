"""Summaries of `deepkern bench --json` files.

    python bench/summary.py RUN.json                 # Markdown table of the cpu rows (for READMEs)
    python bench/summary.py RUN.json --backend cuda  # ... of another backend
    python bench/summary.py RUN.json --headline      # the few rows the top-level README shows
    python bench/summary.py BEFORE.json AFTER.json   # per case: median before, after, speed-up

The second form is how a kernel change is judged (bench/NOTES.md): run the same cases before
and after, on the same machine, and compare medians case by case. Ratios between two runs
include the machine's drift between them; the side-by-side ratios inside one run (vs NumPy,
vs PyTorch) do not.
"""

import argparse
import json

from deepkern.bench import report


def compare(before: dict, after: dict, backend: str) -> str:
    b = {(r["case"], r["backend"]): r for r in before["results"]}
    lines = [f"before: {before['date']} {before.get('commit') or ''}  after: {after['date']} {after.get('commit') or ''}",
             "", f"| case | {backend} ms before | after | speed-up |", "|---|---:|---:|---:|"]
    for r in after["results"]:
        if r["backend"] != backend:
            continue
        old = b.get((r["case"], backend))
        if not old or old["status"] != "ok" or r["status"] != "ok":
            continue
        lines.append(f"| {r['case']} | {old['median_ms']:.3g} | {r['median_ms']:.3g} | "
                     f"{old['median_ms'] / r['median_ms']:.2f}x |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="one JSON file (summary) or two (before, after)")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--headline", action="store_true", help="only the README's headline cases")
    args = ap.parse_args()
    docs = []
    for path in args.runs:
        with open(path, encoding="utf-8") as f:
            docs.append(json.load(f))
    if len(docs) == 1:
        print(report.markdown(docs[0], backend=args.backend,
                              cases=report.HEADLINE if args.headline else None), end="")
    elif len(docs) == 2:
        print(compare(docs[0], docs[1], args.backend), end="")
    else:
        ap.error("give one JSON file, or two to compare")


if __name__ == "__main__":
    main()
