"""The WebAssembly core spec testsuite's module assertions, run against our validator (csrc/wasm_validate.c).

Per .wast file: every binary assert_invalid/assert_malformed module is rejected; every valid module
(module/assert_unlinkable/assert_uninstantiable) is accepted, or rejected with "unsupported: " when it uses a
feature wasm3 0.5.0 cannot run (decided independently in spec_runner.unsupported_features). Text-format-only
assert_malformed modules cannot be produced by wast2json and are counted as skipped.

Run: python -m pytest tests/validator -q -s   (needs gcc and Debian's wabt; conversions cached outside the repo)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spec_runner  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("wast2json") is None or shutil.which("gcc") is None or not spec_runner.SPEC_DIR.is_dir(),
    reason="needs gcc, wabt's wast2json and the spec testsuite",
)

WASTS = spec_runner.all_wasts()


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    return spec_runner.build_cli(tmp_path_factory.mktemp("validator") / "validate_cli")


@pytest.mark.parametrize("wast", WASTS, ids=[w.stem for w in WASTS])
def test_spec_file(cli, wast):
    r = spec_runner.run_file(cli, wast)
    print(
        f"\n{r.name}: invalid/malformed rejected {r.neg_rejected}/{r.neg_total}, text-only skipped "
        f"{r.text_skipped}, valid accepted {r.pos_accepted}/{r.pos_total}, unsupported-feature modules rejected "
        f"{r.unsup_rejected}/{r.unsup_total}"
    )
    assert not r.failures, "\n".join(r.failures)
    assert r.neg_rejected == r.neg_total and r.pos_accepted == r.pos_total


def test_suite_is_complete():
    # the suite we measure against: 73 .wast files, thousands of negative cases
    assert len(WASTS) >= 70
