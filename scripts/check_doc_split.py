"""Check that the split of docs/cuda_kernels.md lost nothing: every non-empty line of the old
file (git show REV:docs/cuda_kernels.md) must occur in docs/cuda_kernels.md or
docs/cuda_kernels_history.md, as often as it occurred before (multiset), except lines listed as
deliberately rewritten (printed, to compare with the list in the commit message).
Usage: python scripts/check_doc_split.py [REV]"""
import collections, pathlib, subprocess, sys
rev = sys.argv[1] if len(sys.argv) > 1 else "9f1405d"  # the last commit before the split
root = pathlib.Path(__file__).resolve().parents[1]
old = subprocess.run(["git", "show", f"{rev}:docs/cuda_kernels.md"], capture_output=True,
                     text=True, cwd=root, check=True).stdout.splitlines()
new = (root / "docs/cuda_kernels.md").read_text().splitlines() + \
      (root / "docs/cuda_kernels_history.md").read_text().splitlines()
have = collections.Counter(new)
missing = []
for i, line in enumerate(old, 1):
    if not line.strip():
        continue
    if have[line] > 0:
        have[line] -= 1
    else:
        missing.append((i, line))
for i, line in missing:
    print(f"{i:5d}: {line}")
print(f"{len(missing)} of {sum(1 for l in old if l.strip())} non-empty old lines not found verbatim")
