"""Run a set of tests many times in a row and count the failures of each: how flaky tests are measured.

    python tests/support/repeat.py -n 20                         # every multi-process test (-m distributed)
    python tests/support/repeat.py -n 20 -k trainer_example      # some of them
    python tests/support/repeat.py -n 5 -m "" tests/test_cli.py  # any tests: -m "" selects every marker

Each repetition is one pytest session over the selected tests (module fixtures are set up again each time).
Prints one line per repetition and then, per test, how many of the N runs failed; exits 1 if any did.
Run it alone on the machine: other work on the same cores changes the timing that flaky failures depend on.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# lines of a failure that name its cause, shown first when a run fails
SIGNS = ("terminate called", "exitcode", "Error:", "assert ")


def outcomes(junit_xml: str) -> dict[str, tuple[str, str]]:
    """test id -> (passed, failed or skipped; the first line of the failure that says most), from a pytest JUnit
    XML report."""
    result = {}
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        failures = [child for child in case if child.tag in ("failure", "error")]
        if failures:
            text = (failures[0].text or failures[0].get("message") or "").splitlines()
            telling = [line for line in text if any(sign in line for sign in SIGNS)] or text[-1:]
            result[name] = ("failed", telling[0].strip()[:200] if telling else "")
        else:
            result[name] = ("skipped" if any(child.tag == "skipped" for child in case) else "passed", "")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--repeat", type=int, default=20, help="how many times to run the tests")
    parser.add_argument("-m", "--marker", default="distributed", help='pytest -m expression ("" for all)')
    parser.add_argument("-k", "--keyword", default="", help="pytest -k expression")
    parser.add_argument("paths", nargs="*", default=["tests"], help="test files or folders (default: tests)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"-n should be at least 1, got {args.repeat}")

    failures, runs = Counter(), Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(1, args.repeat + 1):
            report = os.path.join(tmp, f"run{i}.xml")
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                   *(["-m", args.marker] if args.marker else []), *(["-k", args.keyword] if args.keyword else []),
                   *args.paths]
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if not os.path.exists(report):
                print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
                return 2
            result = outcomes(report)
            for name, (outcome, _) in result.items():
                runs[name] += outcome != "skipped"
                failures[name] += outcome == "failed"
            failed = sorted(n for n, (o, _) in result.items() if o == "failed")
            print(f"run {i}/{args.repeat}: {len(result) - len(failed)} passed, {len(failed)} failed "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            for name in failed:
                print(f"  failed: {name}: {result[name][1]}", flush=True)
    if not runs:
        print("no test selected", file=sys.stderr)
        return 2
    print(f"\nfailures per test in {args.repeat} runs:")
    for name in sorted(runs):
        print(f"  {failures[name]:>3} of {runs[name]}  {name}")
    return 1 if sum(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
