"""Compare the outputs of benchmarks/redesign_equivalence.sh (issue 13's before/after check).

Run:  python benchmarks/redesign_equivalence.py DIR   (DIR holds out-old/ and out-new/)

select: every (query, method) ranking with its scores (rounded to 1e-6) must be identical; policy: the old
default (source-only tasks free) against the new ``--free-source-only``, and the new paper-budget default beside.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def ranking(path: Path) -> list[tuple[str, float | None]] | None:
    text = path.read_text()
    if not text.strip():
        return None
    rows = json.loads(text)["results"]
    return [(r["expert"], None if r.get("score") is None else round(r["score"], 6)) for r in rows]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    same, different = 0, []
    for old in sorted((root / "out-old").glob("select-*.json")):
        a, b = ranking(old), ranking(root / "out-new" / old.name)
        if a is not None and a == b:
            same += 1
        else:
            different.append(f"{old.name}: old {a}, new {b}")
    print(f"select: {same} identical rankings and scores, {len(different)} different")
    for line in different:
        print("  " + line)
    for old in sorted((root / "out-old").glob("policy-*.json")):
        a = json.loads(old.read_text())
        b = json.loads((root / "out-new" / old.name).read_text())
        paper = json.loads((root / "out-new" / old.name.replace("policy-", "policy-paper-")).read_text())
        equal = all(a.get(k) == b.get(k) for k in ("supervised", "objective", "transfers"))
        print(f"{old.stem}: old default vs new --free-source-only {'identical' if equal else 'DIFFERENT'} "
              f"(objective {a.get('objective'):.4f}, {len(a.get('supervised', []))} supervised); paper default: "
              f"objective {paper.get('objective'):.4f}, cost {paper.get('cost')}, source-only used "
              f"{paper.get('source_only_used')}")


if __name__ == "__main__":
    main()
