"""Redacted copies to compare byte for byte before and after a change to the redactor.

    python benchmarks/redact_reference.py OUT [--bench-run DIR]
    ... change the redactor ...
    python benchmarks/redact_reference.py OUT2 && diff -r OUT OUT2

Redacts the corpus runs (/work/shared/corpus, or $TFWB_CORPUS) and the benchmark's 10,000-image
run (written by bench_redact.py into /tmp/tfwb-bench-redact) under three policies: the default,
the README's reference policy, and one with site patterns, kept strings, kept artifacts and
scrubbed files. Each copy goes to OUT/<policy>/<run>, its report beside it as JSON. The secret
is fixed, so two trees made by the same redactor are identical.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from tfwb_agent.redact.policy import DEFAULT_POLICY, parse_policy
from tfwb_agent.redact.run import redact_run

SECRET = b"0123456789abcdef0123456789abcdef"   # fixed on purpose: the trees must compare equal
REFERENCE = {"console": "scrub", "metadata": "redact", "patterns": [], "artifacts": "drop",
             "rule": [{"key": "samples/*", "media": ["image"], "action": "hash"},
                      {"key": "predictions", "media": ["table"], "action": "keep",
                       "columns": {"patient_id": "hash", "email": "drop"}}]}
SITE = {"patterns": [r"\bP\d{4}\b", r"\b[\w.+-]+@hospital\.example\b", r"\bloss\b", r"mask"],
        "keep_strings": ["console"], "artifacts": "keep", "scrub_files": True,
        "rule": [{"key": "samples/ct", "media": ["image"], "action": "keep"},
                 {"key": "predictions", "media": ["table"], "action": "hash"}]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--corpus", type=Path, default=Path(os.environ.get("TFWB_CORPUS", "/work/shared/corpus")))
    ap.add_argument("--bench-run", type=Path, default=Path("/tmp/tfwb-bench-redact/run-10000-64"))
    args = ap.parse_args()
    runs = []
    for base in sorted(args.corpus.glob("wandb-*")):
        # The corpus was written with its volume at /runs/<version>: map its paths here.
        def mapped(p: str, base: Path = base) -> Path:
            return Path(p.replace(f"/runs/{base.name}", str(base), 1))
        runs += [(r, mapped) for r in sorted((base / "wandb").glob("offline-run-*"))]
    runs += [(r, Path) for r in sorted((args.bench_run / "wandb").glob("offline-run-*")) if not r.is_symlink()]
    policies = {"default": DEFAULT_POLICY, "reference": parse_policy("reference", REFERENCE),
                "site": parse_policy("site", SITE)}
    shutil.rmtree(args.out, ignore_errors=True)
    for name, policy in policies.items():
        for src, map_path in runs:
            report = redact_run(src, args.out / name / src.name, policy, SECRET, map_path)
            (args.out / name / f"{src.name}.report.json").write_text(
                json.dumps(report.to_dict(), indent=1, sort_keys=True, default=str))
    print(f"{len(runs)} runs x {len(policies)} policies into {args.out}")


if __name__ == "__main__":
    main()
