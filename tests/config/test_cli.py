"""`validate CONFIG [--base BASE] [KEY VALUE ...] [--json]`: output lines and exit codes."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
from pathlib import Path

from backend.config.cli import add_validate_parser
from tests.config.samples import MITO_BASE, MITO_OVERLAY, minimal

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^(?P<file>.+?)(:(?P<line>\d+))?: (?P<level>error|warning): (?P<rest>.+)$")


def cli(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="trainboard")
    add_validate_parser(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    out = io.StringIO()
    code = args.func(args, out)
    return code, out.getvalue()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_config_exits_zero(tmp_path: Path) -> None:
    config = write(tmp_path, "ok.yaml", minimal())
    code, out = cli("validate", str(config), "--no-check-paths")
    assert code == 0
    assert out == "valid: 0 errors, 0 warnings\n"


def test_problems_are_printed_compiler_style(tmp_path: Path) -> None:
    config = write(
        tmp_path, "bad.yaml", minimal(SOLVER="  BASE_LRR: 0.1\n  SAMPLES_PER_BATCH: 0\n")
    )
    code, out = cli("validate", str(config), "--no-check-paths")
    assert code == 1
    *lines, summary = out.splitlines()
    assert summary == "invalid: 2 errors, 0 warnings"
    assert lines == [
        f"{config}:10: error: SOLVER.BASE_LRR: non-existent config key "
        "(suggestion: did you mean SOLVER.BASE_LR?)",
        f"{config}:11: error: SOLVER.SAMPLES_PER_BATCH: 0 is out of range "
        "(expected >= 1; suggestion: the default is 2)",
    ]
    for line in lines:
        assert LINE.match(line)


def test_warnings_alone_exit_zero(tmp_path: Path) -> None:
    config = write(tmp_path, "warn.yaml", minimal(MODEL="  EMBEDDING: 2\n"))
    code, out = cli("validate", str(config), "--no-check-paths")
    assert code == 0
    assert out.splitlines()[-1] == "valid: 0 errors, 1 warning"


def test_base_and_overrides(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", MITO_BASE)
    overlay = write(tmp_path, "overlay.yaml", MITO_OVERLAY)
    code, out = cli(
        "validate", str(overlay), "--base", str(base), "SOLVER.BASE_LR", "-1", "--no-check-paths"
    )
    assert code == 1
    assert "override: error: SOLVER.BASE_LR: -1.0 is out of range" in out
    line = MITO_BASE.splitlines().index("  INPUT_SIZE: [17, 257, 257]") + 1
    assert f"{base}:{line}: warning: INFERENCE: accepted, not used" in out


def test_problem_without_location_names_the_config(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "c.yaml",
        minimal(),
    )
    code, out = cli("validate", str(config), "MODEL.TARGET_OPT", "['0', '2']", "--no-check-paths")
    assert code == 1
    assert "override: error: MODEL.OUT_PLANES:" in out


def test_json_output(tmp_path: Path) -> None:
    config = write(tmp_path, "bad.yaml", "MODEL:\n  ARCHITECTURE: unet_4d\n")
    code, out = cli("validate", str(config), "--json", "--no-check-paths")
    assert code == 1
    problems = json.loads(out)
    arch = next(p for p in problems if p["key"] == "MODEL.ARCHITECTURE")
    assert arch["level"] == "error" and arch["line"] == 2 and arch["file"] == str(config)
    assert set(arch) == {"level", "key", "message", "expected", "suggestion", "file", "line"}


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    code, out = cli("validate", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert out.startswith(f"{tmp_path / 'nope.yaml'}: error: cannot read the file")


def test_yaml_syntax_error_is_reported_not_raised(tmp_path: Path) -> None:
    config = write(tmp_path, "broken.yaml", "MODEL:\n  INPUT_SIZE: [8, 64\n")
    code, out = cli("validate", str(config))
    assert code == 1
    assert LINE.match(out.splitlines()[0])


SCRIPT = """
import argparse, sys
from backend.config.cli import add_validate_parser
parser = argparse.ArgumentParser(prog="trainboard")
add_validate_parser(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
code = args.func(args)
print("torch imported:", "torch" in sys.modules, file=sys.stderr)
raise SystemExit(code)
"""


def test_cli_in_a_fresh_process_without_torch(tmp_path: Path) -> None:
    config = write(tmp_path, "bad.yaml", minimal(SOLVER="  NAME: RMSprop\n"))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, "validate", str(config), "--no-check-paths"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"{config}:10: error: SOLVER.NAME: 'RMSprop' is not a valid value" in result.stdout
    assert result.stdout.splitlines()[-1] == "invalid: 1 error, 0 warnings"
    assert "torch imported: False" in result.stderr


def test_options_and_overrides_in_any_order() -> None:
    parser = argparse.ArgumentParser(prog="trainboard")
    add_validate_parser(parser.add_subparsers())
    for argv in (
        ["validate", "c.yaml", "--base", "b.yaml", "SOLVER.BASE_LR", "-1", "--json"],
        ["validate", "--base", "b.yaml", "c.yaml", "SOLVER.BASE_LR", "-1", "--json"],
        ["validate", "--json", "c.yaml", "SOLVER.BASE_LR", "-1", "--base", "b.yaml"],
    ):
        args = parser.parse_args(argv)
        assert args.config == Path("c.yaml") and args.base == Path("b.yaml"), argv
        assert args.overrides == ["SOLVER.BASE_LR", "-1"] and args.json, argv
        assert args.check_paths
