"""Print the sabotage table: for each break, every guarding test that failed (no -x)."""
from __future__ import annotations

import time

from tests.sabotage._catalogue import SABOTAGES
from tests.sabotage.test_sabotage import failed_tests, run_guards


def main() -> None:
    print("| sabotage | what is broken | guarding tests failed | seconds |")
    print("|---|---|---|---|")
    for name in sorted(SABOTAGES):
        t0 = time.monotonic()
        code, output = run_guards(name, stop_at_first=False)
        failed = failed_tests(output)
        print(f"| {name} | {SABOTAGES[name].what} | {len(failed)} of {SABOTAGES[name].count(output)}: "
              f"{', '.join(f.split('::')[-1] for f in failed[:6])}{' ...' if len(failed) > 6 else ''} "
              f"| {time.monotonic() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
