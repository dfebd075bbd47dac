"""The `tailcal` command: every sub-command's options come from its function's signature, and
a user error ends in exit code 2 with one line, before anything starts."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from flows import ablation, drift_monitor, release_cycle, scoring, train_detector
from flows.cli import app, main
from tasks.serving import server
from tasks.testing import reference_scorer

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {
    "run": release_cycle.release_cycle.fn,
    "ablate": ablation.ablation.fn,
    "score": scoring.score.fn,
    "drift": drift_monitor.drift_monitor.fn,
    "train-detector": train_detector.train_detector,
    "serve": server.serve,
    "reference-scorer": reference_scorer.serve,
}


def _option(parameter: str) -> str:
    return "--config" if parameter == "config_path" else "--" + parameter.replace("_", "-")


def test_help_lists_every_command(capsys):
    # when
    code = main(["--help"])
    # then
    listed = capsys.readouterr().out
    assert code == 0, "--help exits 0"
    for command in COMMANDS:
        assert re.search(rf"│ {re.escape(command)}\s", listed), f"{command} missing from tailcal --help:\n{listed}"
    assert set(app.resolved_commands()) >= set(COMMANDS), "every command is registered"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_offers_exactly_its_functions_parameters_with_their_help(command, capsys):
    # given the function behind the command
    function = COMMANDS[command]
    parameters = list(inspect.signature(function).parameters)
    # when
    code = main([command, "--help"])
    # then
    text = capsys.readouterr().out
    assert code == 0, f"{command} --help exits 0"
    shown = set(re.findall(r"(--[a-z0-9-]+)", text)) - {"--help", "--version"}
    assert shown == {_option(p) for p in parameters}, f"{command}: options {sorted(shown)} vs signature {parameters}"
    first_doc_line = inspect.getdoc(function).splitlines()[0]
    assert first_doc_line[:40] in " ".join(text.split()), f"{command} --help shows the docstring"


def test_options_are_typed_and_checked_before_anything_runs(capsys):
    # when K is not a number, or the strategy is not one we have
    not_a_number = main(["run", "--k", "many"])
    unknown_choice = main(["run", "--strategy", "best"])
    # then both are refused as usage errors
    errors = capsys.readouterr()
    assert not_a_number == 2 and unknown_choice == 2, "usage errors exit 2"
    assert "many" in errors.out + errors.err and "best" in errors.out + errors.err, "the bad value is named"


def test_a_missing_config_file_is_one_line_and_exit_2_without_starting_prefect(tmp_path, capsys):
    # when
    code = main(["run", "--config", str(tmp_path / "missing.yaml")])
    # then
    err = capsys.readouterr().err
    assert code == 2, "a TailcalError exits 2"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tailcal: config file"), f"one line naming the problem: {err!r}"
    assert "missing.yaml" in lines[0], "the file is named"
    assert "Starting temporary server" not in err, "Prefect did not start for a bad config"


def test_an_invalid_setting_is_one_line_naming_the_key(tmp_path, capsys):
    # given a config with two invalid settings
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["selection"]["k"] = 0
    config["quantization"]["range_estimator"] = "MAXMIN"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    # when
    code = main(["score", "--config", str(path), "--dry-run"])
    # then
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, f"exit 2, one line: {lines}"
    assert "selection.k" in lines[0] and "quantization.range_estimator" in lines[0], f"both keys named: {lines[0]}"
    # and the two complaints are kept apart, not run together
    assert "invalid setting(s): " in lines[0] and lines[0].count("; ") == 1, f"one '; ' between the two: {lines[0]}"


def test_python_dash_m_flows_entry_points_still_work():
    # The pre-`tailcal` entry points run the same command.
    for module, option in (("flows.release_cycle", "--range-estimator"), ("flows.ablation", "--estimators")):
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert option in result.stdout, f"python -m {module} --help shows {option}"


def test_the_console_script_is_installed():
    # `make install` installs the project itself, so `tailcal` is on the venv's PATH.
    script = Path(sys.executable).parent / "tailcal"
    assert script.exists(), f"{script} missing: run make install"
    result = subprocess.run([str(script), "score", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--dry-run" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("command", ["", *sorted(COMMANDS)])
def test_the_readme_shows_each_commands_help_as_it_is(command, capsys, monkeypatch):
    # given the width the README's help was captured at, on a console of the test's own (cyclopts
    # keeps the console it first made, at the width of that moment: another test in this process
    # may have made it)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr(app, "console", Console(width=100, no_color=True))
    # when
    main([command, "--help"] if command else ["--help"])
    # then
    shown = "\n".join(line.rstrip() for line in capsys.readouterr().out.strip().splitlines())
    readme = (ROOT / "README.md").read_text()
    assert shown in readme, f"README.md is out of date for `tailcal {command} --help`; it prints:\n{shown}"


def test_train_detector_refuses_a_budget_or_batch_that_trains_nothing(tmp_path, capsys):
    out = tmp_path / "model.pt"
    code = main(["train-detector", "--minutes", "-1", "--batch-size", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--minutes -1.0" in err and "--batch-size 0" in err, err
    assert not out.exists(), "nothing is written for a refused training"


def test_servers_refuse_a_port_they_cannot_listen_on_before_loading_anything(capsys):
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        for argv in (
            ["serve", "--port", "70000"],
            ["serve", "--port", str(busy)],
            ["reference-scorer", "--port", str(busy)],
        ):
            code = main(argv)
            last = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tailcal:")]
            assert code == 2 and len(last) == 1, f"{argv}: exit {code}, {last}"
            assert "port" in last[0], f"{argv}: the message names the port: {last[0]}"


def test_run_overrides_the_bias_correction_from_the_command_line():
    from flows.release_cycle import release_cycle
    from tasks.config import load_for

    path = str(ROOT / "configs" / "release.yaml")
    assert load_for(release_cycle.fn, {"config_path": path}).quantization.bias_correction == "fast"
    config = load_for(release_cycle.fn, {"config_path": path, "bias_correction": "none"})
    assert config.quantization.bias_correction == "none", "--bias-correction none reaches the config"


def test_an_option_given_as_none_is_refused_not_read_as_left_out(capsys):
    # cyclopts reads "None"/"null" as no value, which would run the config's value in silence
    for argv in (["run", "--k", "None"], ["run", "--bias-correction", "NULL"], ["score", "--subset-size", "none"]):
        code = main([*argv, "--config", str(ROOT / "configs" / "demo.yaml")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err and "given as None/null" in err[-1] and argv[1] in err[-1], (argv, err)


def test_serve_reads_only_the_serving_section_and_refuses_zero_counts(tmp_path, capsys):
    # a serving-only file: no gateway or budget is asked for, the bad serving key is named
    serving_only = tmp_path / "serving.yaml"
    serving_only.write_text(yaml.safe_dump({"serving": {"hard_difficulty": 2, "ir_dir": str(tmp_path)}}))
    code = main(["serve", "--config", str(serving_only)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "serving.hard_difficulty = 2" in err, err
    assert "gateway" not in err and "budget" not in err, f"serve needs no other section: {err}"
    # a misspelt section, or a serving section that is not a mapping, is refused, not served as the defaults
    for name, tree in {"typo": {"servng": {"default_tier": "int8"}}, "list": {"serving": []}}.items():
        bad = tmp_path / f"{name}.yaml"
        bad.write_text(yaml.safe_dump(tree))
        code = main(["serve", "--config", str(bad), "--ir-dir", str(tmp_path)])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and str(bad) in err and ("servng" in err or "serving" in err), (name, err)
    # a count of 0 on the command line is refused, not read as "not given"
    for option in ("--threads", "--infer-requests"):
        code = main(["serve", "--config", str(ROOT / "configs" / "release.yaml"), option, "0"])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and option in err and "greater than or equal to 1" in err, (option, err)
