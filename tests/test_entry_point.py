"""One way in: ``lit-sr <command>`` / ``python -m lit_sr <command>`` reaches every job (lit_sr/__main__.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lit_sr.__main__ import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ["fit", "validate", "test", "predict", "evaluate", "evaluate-refsr", "refsr-claims", "robust", "defend", "study", "data"]


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0, argv
    return capsys.readouterr().out


def test_the_overview_lists_every_command_on_one_line(capsys):
    assert list(COMMANDS) == EXPECTED
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, command in COMMANDS.items():
        line = next(line for line in out.splitlines() if command.summary in line)
        assert name in line or name == "evaluate-refsr", line  # argparse puts a long name on its own line
        assert f"    {name}" in out


@pytest.mark.parametrize("name", [n for n in EXPECTED if n not in ("validate", "test", "predict")])
def test_each_command_has_its_own_help(name, capsys):
    out = _help([name, "--help"], capsys)
    assert f"lit-sr {name}" in out or (name == "fit" and "lit-sr" in out and "--trainer" in out), out[:400]


@pytest.mark.parametrize("name", ["validate", "test", "predict"])
def test_the_lightning_subcommands_reach_lightningcli(name, capsys):
    out = _help([name, "--help"], capsys)
    assert "--ckpt_path" in out and "--trainer" in out


def test_no_command_or_an_unknown_one_is_exit_code_2(capsys):
    assert main([]) == 2
    assert "a command is required" in capsys.readouterr().err
    assert main(["evaluat"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'evaluat'" in err and "evaluate-refsr" in err


def test_a_job_gets_its_arguments_and_its_exit_code(tmp_path, capsys):
    # the defense report refuses a missing config file with exit code 2 and names it
    missing = tmp_path / "nope.yaml"
    assert main(["defend", "--config", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


@pytest.mark.slow
def test_the_console_script_and_the_module_entry():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '[project.scripts]\nlit-sr = "lit_sr.__main__:main"\n' in pyproject
    # the one subprocess: `python -m lit_sr` runs __main__ and lists the commands without importing a job
    code = ("import runpy, sys; sys.argv = ['lit_sr', '--help']\n"
            "try:\n    runpy.run_module('lit_sr', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
            "print('JOBS', sorted(m for m in sys.modules if m.startswith('lit_sr.jobs')), 'EXIT', code)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in EXPECTED)
    assert "JOBS [] EXIT 0" in result.stdout
