"""Fail on any pytest skip whose reason is not on the allow-list.

    python .ci/check_skips.py ALLOW_LIST LOG...

ALLOW_LIST: one regular expression per line, matched against the reason of each `SKIPPED [n]
file:line: reason` line that `pytest -rs` printed in the LOGs; `#` starts a comment (say why the
skip is fine there). Every skip is printed with its verdict.
"""

import re
import sys
from pathlib import Path

SKIP_LINE = re.compile(r"^SKIPPED \[(\d+)\] ([^:]+:\d+): (.*)$")


def main(allow_path: str, *logs: str) -> int:
    allowed = []
    for line in Path(allow_path).read_text().splitlines():
        pattern = line.split("#", 1)[0].strip()
        if pattern:
            allowed.append(re.compile(pattern))
    bad = 0
    for log in logs:
        for line in Path(log).read_text(errors="replace").splitlines():
            m = SKIP_LINE.match(line.strip())
            if not m:
                continue
            count, where, reason = m.groups()
            ok = any(p.search(reason) for p in allowed)
            bad += not ok
            print(f"{'allowed' if ok else 'NOT ALLOWED'}: {count} x {where}: {reason}")
    if bad:
        print(f"{bad} skip reason(s) not on the allow-list {allow_path}: a skipped test is a test that did not run",
              file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
