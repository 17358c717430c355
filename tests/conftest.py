import os
import sys
from pathlib import Path

import pytest

# Test helpers (memory_pipe, ...) live next to the tests.
sys.path.insert(0, str(Path(__file__).parent))

_REQUIRE_INTEROP = os.environ.get("P2PNET_REQUIRE_INTEROP", "").strip() not in (
    "",
    "0",
    "false",
    "no",
)
_interop_passed = 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """With P2PNET_REQUIRE_INTEROP set (CI), a skipped interop test is a failure."""
    global _interop_passed
    report = yield
    if item.get_closest_marker("interop") is not None:
        if report.skipped and _REQUIRE_INTEROP:
            report.outcome = "failed"
            why = report.longrepr
            report.longrepr = f"interop test skipped but P2PNET_REQUIRE_INTEROP is set: {why}"
        elif report.when == "call" and report.passed:
            _interop_passed += 1
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _REQUIRE_INTEROP and exitstatus == 0 and _interop_passed == 0:
        print("\nP2PNET_REQUIRE_INTEROP is set but no interop test ran", file=sys.stderr)
        session.exitstatus = 1
