"""The adversarial tests of tests/adversarial/, each attack running longer (default 30 s).

    python bench/adversarial.py [seconds] [-k pattern]

Prints, per attack, the victim's baseline, peak and final RSS, the refusals counted by its
resource manager and the legitimate peer's p99 latency; the same assertions as the tests hold.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    args = sys.argv[1:]
    seconds = args.pop(0) if args and not args[0].startswith("-") else "30"
    env = {**os.environ, "ADVERSARIAL_DURATION": seconds}
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider"]
    cmd += [str(ROOT / "tests" / "adversarial"), *args]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
