"""Run named mutmut mutants against a test selection in one process: a fast check of survivors by hand.

    cd mutants && OMP_NUM_THREADS=1 python ../tests/mutation_check.py NAMES OUT.tsv [test files ...]

mutmut's mutated modules (in mutants/, after a `mutmut run`) read MUTANT_UNDER_TEST at every call, so one pytest
process can run the selection once per mutant without re-importing anything. NAMES holds one mutant name per line,
optionally followed by a TAB and a `-k` expression; each mutant's line in OUT.tsv reads `name<TAB>killed|SURVIVED
<TAB>first failing test` (UNTESTED when every selected test skipped: tests that read ../shared/data find it from
mutants/ only through CROSSMODAL_SHARED_DATA). The default selection is the distiller tests. This is a helper for docs/TESTING.md's
mutation runs (`mutmut run` on its own maps slow tests to some functions), not part of the test suite.
"""
import contextlib
import io
import os
import sys


class FirstFailure:
    """pytest plugin: the node id of the first failing test, and how many selected tests passed or skipped."""

    def __init__(self):
        self.nodeid = ""
        self.passed = self.skipped = 0

    def pytest_runtest_logreport(self, report):
        if report.failed and not self.nodeid:
            self.nodeid = report.nodeid.split("::", 1)[-1]
        self.passed += report.when == "call" and report.passed
        self.skipped += report.skipped


def main(argv: list[str]) -> int:
    sys.path.insert(0, os.getcwd())  # the mutated package in mutants/, not the installed one
    import pytest
    import torch

    torch.set_num_threads(1)
    names_file, out_file, *files = argv
    files = files or ["tests/test_distillers.py", "tests/test_distiller_values.py"]
    with open(names_file) as fh, open(out_file, "w") as out:
        for line in fh:
            if not line.strip():
                continue
            name, _, expr = line.rstrip("\n").partition("\t")
            os.environ["MUTANT_UNDER_TEST"] = name
            args = ["-x", "-q", "-p", "no:cacheprovider", *files] + (["-k", expr] if expr else [])
            first = FirstFailure()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                rc = pytest.main(args, plugins=[first])
            import crossmodal

            if not crossmodal.__file__.startswith(os.getcwd()):
                raise SystemExit(f"crossmodal was imported from {crossmodal.__file__}, not from {os.getcwd()}: "
                                 "run this from mutants/")
            status = "killed" if rc == 1 else ("SURVIVED" if rc == 0 else f"rc={int(rc)}")
            if status == "SURVIVED" and first.passed == 0:  # every selected test skipped: nothing was checked
                status = f"UNTESTED ({first.skipped} skipped)"
            print(f"{name}\t{status}\t{first.nodeid}", file=out, flush=True)
            print(f"{name}\t{status}", flush=True)
    os.environ.pop("MUTANT_UNDER_TEST", None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
