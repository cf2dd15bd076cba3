"""Copy an `actadd paper` folder's report into docs/audit/<model>/: REPORT.md, paper.json,
timing.jsonl and each experiment's summary.json, summary.csv and figure (the continuations in
results.jsonl stay behind: the command at the top of REPORT.md makes them again, seed for seed).

    python scripts/publish_audit.py runs/audit-smollm2-135m docs/audit/smollm2-135m

REPORT.md is rendered again from paper.json by `actadd.experiments.paper.render` (a pure
function of paper.json), so that a fix to the report's wording reaches a published report without
rerunning hours of experiments; the figures are paper.json's, untouched.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from actadd.experiments import paper

KEEP = ("summary.json", "summary.csv")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the folder actadd paper --out wrote")
    parser.add_argument("dest", type=Path, help="docs/audit/<model>")
    args = parser.parse_args()
    report = json.loads((args.run / "paper.json").read_text(encoding="utf-8"))
    args.dest.mkdir(parents=True, exist_ok=True)
    for name in ("paper.json", "timing.jsonl"):
        shutil.copyfile(args.run / name, args.dest / name)
    for folder in sorted(p for p in args.run.iterdir() if p.is_dir() and p.name != "search"):
        files = [f for f in folder.iterdir() if f.name in KEEP or f.suffix == ".png"]
        (args.dest / folder.name).mkdir(exist_ok=True)
        for f in files:
            shutil.copyfile(f, args.dest / folder.name / f.name)
    (args.dest / "REPORT.md").write_text(paper.render(report), encoding="utf-8")
    print(f"wrote {args.dest}: REPORT.md, paper.json, timing.jsonl and "
          f"{sum(1 for _ in args.dest.rglob('*')) - 3} files of the experiments")


if __name__ == "__main__":
    main()
