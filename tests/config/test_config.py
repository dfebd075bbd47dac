"""Config loading: valid files load; bad ones fail at start naming key, value and what is allowed."""

import logging
from pathlib import Path
from typing import Annotated

import pytest

from tasks.config import (
    Override,
    SelectionConfig,
    TailcalConfig,
    load_config,
    load_for,
    parameter_overrides,
    section_with,
)
from tasks.errors import ConfigError
from tests.support import ROOT

pytestmark = pytest.mark.unit

CONFIGS = ROOT / "configs"

MINIMAL = """
gateway:
  models: [{name: m, input_eur_per_mtok: 0.1, output_eur_per_mtok: 0.4}]
budget:
  cap_eur: 1.0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def _refusal(tmp_path: Path, text: str) -> str:
    """The ConfigError message loading `text` raises."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return str(caught.value)


@pytest.mark.parametrize("name", ["demo.yaml", "release.yaml", "ablation.yaml"])
def test_shipped_configs_validate(name):
    config = load_config(CONFIGS / name)
    assert isinstance(config, TailcalConfig), f"{name} should load into a TailcalConfig"


def test_minimal_config_gets_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.cache.similarity == 0.92, "default near-duplicate similarity is 0.92"
    assert config.cache.ttl_hours == 168, "default cache TTL is 168 h"
    assert config.scoring.passes == 2, "default is two scoring passes"
    assert config.quantization.range_estimator == "MEAN_MINMAX", "NNCF's default estimator"
    assert config.pool.uri.endswith("data/demo/pool"), "pool defaults to <data_dir>/pool"
    assert Path(config.pool.uri).is_absolute(), "the default pool path is resolved to absolute"
    assert config.data.data_dir.is_absolute(), "data_dir is resolved to absolute at load"
    assert config.evaluation.dataset_dir == config.data.data_dir / "eval", "eval defaults to <data_dir>/eval"
    assert config.scoring.prompts_dir == (Path.cwd() / "configs" / "prompts").resolve(), "prompts_dir resolved"


def test_unknown_key_names_the_key_and_lists_allowed(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL + "selection:\n  strategie: topk\n"))
    message = str(err.value)
    assert "selection.strategie" in message, f"message should name the bad key: {message}"
    assert "strategy" in message and "hard_fraction" in message, f"message should list allowed keys: {message}"


def test_bad_enum_names_key_value_and_choices(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL + "quantization:\n  range_estimator: MAXMIN\n"))
    message = str(err.value)
    assert "quantization.range_estimator" in message, message
    assert "'MAXMIN'" in message, f"message should show the bad value: {message}"
    assert "MEAN_QUANTILE" in message, f"message should list allowed values: {message}"


def test_out_of_range_number_names_key_and_bound(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL + "cache:\n  similarity: 1.5\n"))
    message = str(err.value)
    assert "cache.similarity" in message and "1.5" in message, message
    assert "less than or equal to 1" in message, f"message should state the bound: {message}"


def test_missing_required_section_is_named(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "budget:\n  cap_eur: 1.0\n"))
    assert "gateway: required but missing" in str(err.value), str(err.value)


def test_secret_in_yaml_is_refused_with_a_pointer_to_the_environment(tmp_path):
    text = MINIMAL.replace("gateway:\n", "gateway:\n  api_key: sk-not-here\n")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert "gateway.api_key" in message and "environment" in message, message
    assert "TAILCAL_GATEWAY_KEY" in message, f"the variable to use is named: {message}"
    assert "sk-not-here" not in message, "the secret value itself must not be echoed"


def test_a_check_across_a_section_is_reported_with_the_field_errors_and_without_the_section_dump(tmp_path):
    # given a wrong field in one section and a range that runs past 65535 in another
    text = MINIMAL + "selection:\n  k: 0\nscoring:\n  metrics_port: 65530\n  metrics_ports: 10\n"
    message = _refusal(tmp_path, text)
    # then both are named at once, the cross-setting one by its message, not by the whole section's values
    assert "2 invalid setting(s)" in message and "selection.k = 0" in message, message
    assert "scoring: scoring.metrics_port 65530 with metrics_ports 10 runs past port 65535" in message, message
    assert "Value error" not in message and "'prompt'" not in message, f"no pydantic prefix, no section dump: {message}"


def test_fallback_degradation_requires_a_model(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL.replace("cap_eur: 1.0", "cap_eur: 1.0\n  on_exhausted: fallback_model")))
    assert "fallback_model" in str(err.value), str(err.value)


def test_gateway_url_must_be_http_or_embedded(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL.replace("gateway:\n", "gateway:\n  url: ftp://x\n")))
    assert "gateway" in str(err.value) and "ftp://x" in str(err.value), str(err.value)


def test_missing_file_and_bad_yaml_say_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "gateway: [unclosed\n"))


def test_dotted_overrides_are_validated_like_the_file(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), {"selection.k": 64, "selection.strategy": "random"})
    assert (config.selection.k, config.selection.strategy) == (64, "random"), "overrides apply"
    with pytest.raises(ConfigError, match=r"selection\.k"):
        load_config(write(tmp_path, MINIMAL), {"selection.k": 0})


def test_a_metrics_port_range_past_65535_is_refused_naming_both_settings(tmp_path):
    overrides = {"scoring.metrics_port": 65530, "scoring.metrics_ports": 8}
    with pytest.raises(ConfigError, match=r"metrics_port 65530 with metrics_ports 8 runs past port 65535"):
        load_config(write(tmp_path, MINIMAL), overrides)
    config = load_config(write(tmp_path, MINIMAL), overrides | {"scoring.metrics_port": 65528})
    assert config.scoring.metrics_ports == 8, "a range ending at 65535 is fine"
    with pytest.raises(ConfigError, match=r"metrics_ports is 8 but scoring.metrics_port is unset"):
        load_config(write(tmp_path, MINIMAL), {"scoring.metrics_ports": 8})


def test_a_yaml_boolean_never_becomes_a_number_or_a_path(tmp_path):
    # given `k: yes` (pydantic alone would make it K=1), `max_retries: no` (0) and `data_dir: off`,
    # beside a setting that does take true/false
    text = MINIMAL.replace("gateway:\n", "gateway:\n  max_retries: no\n")
    # and `bias_correction: no` where a word was meant
    text += "selection:\n  k: yes\ndata:\n  data_dir: off\nevaluation:\n  gap_decomposition: no\n"
    text += "quantization:\n  bias_correction: no\n"
    message = _refusal(tmp_path, text)
    # then each of the four is refused by name with the fix, and the boolean setting is not
    keys = ("selection.k = True", "gateway.max_retries = False", "data.data_dir = False")
    for key in (*keys, "quantization.bias_correction = False"):
        assert f"{key}: YAML reads an unquoted yes, no, on or off" in message, message
    assert "4 invalid setting(s)" in message and "gap_decomposition" not in message, message
    assert message.count("quote the word you meant") == 4, message


def test_config_is_frozen(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(ValueError):
        config.selection.k = 5


def test_flow_parameters_marked_as_overrides_map_to_their_config_keys(tmp_path):
    # given a flow-like function whose parameters declare the keys they override
    def flow(
        config_path: str,
        k: Annotated[int | None, Override("selection.k")] = None,
        prompt: Annotated[str | None, Override("scoring.prompt")] = None,
        release_id: str | None = None,
    ): ...

    # when some are given
    arguments = {"config_path": str(write(tmp_path, MINIMAL)), "k": 64, "prompt": None, "release_id": "r1"}
    # then only the given, marked ones become overrides, and load_for applies them
    assert parameter_overrides(flow, arguments) == {"selection.k": 64}, "None and unmarked parameters are not overrides"
    assert load_for(flow, arguments).selection.k == 64, "the override reached the config"


def test_an_invalid_override_is_named_as_a_run_parameter_not_the_files_value(tmp_path):
    def flow(config_path: str, k: Annotated[int | None, Override("selection.k")] = None): ...

    with pytest.raises(ConfigError) as caught:
        load_for(flow, {"config_path": str(write(tmp_path, MINIMAL)), "k": 0})
    message = str(caught.value)
    assert "selection.k (given as a run parameter, not in the file) = 0" in message, message


def test_section_with_validates_the_change_like_the_file():
    section = SelectionConfig()
    assert section_with(section, "test", k=32, seed=4) == SelectionConfig(k=32, seed=4), "a valid change is applied"
    with pytest.raises(ConfigError, match=r"k = 0: Input should be greater than or equal to 1"):
        section_with(section, "test", k=0)
    with pytest.raises(ConfigError, match="seed = -1"):
        section_with(section, "test", seed=-1)


def test_a_directory_a_binary_file_and_a_missing_file_are_named_with_the_fix(tmp_path, monkeypatch):
    binary = tmp_path / "c.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="is a directory: pass a YAML file"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match=r"not a text file|not valid YAML"):
        load_config(binary)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"relative paths start from the working directory, {tmp_path}"):
        load_config("configs/demo.yaml")


def test_credentials_in_the_gateway_url_are_refused(tmp_path):
    text = MINIMAL.replace("gateway:\n", "gateway:\n  url: https://alice:hunter2@gw.example.com/v1\n")
    with pytest.raises(ConfigError, match=r"gateway.url = .*url holds credentials .*TAILCAL_GATEWAY_KEY") as caught:
        load_config(write(tmp_path, text))
    assert "hunter2" not in str(caught.value), f"the refused password is not echoed: {caught.value}"


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ("data:\n  synthetic:\n    eval_conditions: {low_light: -1, normal: 1}\n", "negative or NaN"),
        ("data:\n  synthetic:\n    conditions: {low_light: 0, normal: 0}\n", "sum to 0"),
        ("data:\n  synthetic:\n    eval_conditions: {fog: 1}\n", "data.synthetic.eval_conditions.fog"),
        ("selection:\n  ablation_factor_rows: [topk]\n", "'stratified', 'hard_tail_mix' or 'coverage'"),
        ("selection:\n  grouping: labels\n", "'auto', 'condition' or 'factors'"),
    ],
)
def test_condition_mixes_and_grouping_knobs_are_checked_at_load(tmp_path, section, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, MINIMAL + section))


def test_a_shifted_production_mix_and_a_factors_row_load(tmp_path):
    config = load_config(
        write(
            tmp_path,
            MINIMAL
            + "data:\n  synthetic:\n    ordering: runs\n    eval_conditions: {low_light: 2, normal: 2}\n"
            + "selection:\n  ablation_factor_rows: [hard_tail_mix, hard_tail_mix]\n",
        )
    )
    assert config.data.synthetic.eval_conditions == {"low_light": 2, "normal": 2}, "weights are kept as given"
    assert config.data.synthetic.conditions is None, "the pool keeps the built-in mix"
    assert config.selection.ablation_factor_rows == ["hard_tail_mix"], "a repeated row runs once"


def test_widest_ranges_under_minmax_is_warned_of_naming_both_keys(tmp_path, caplog):
    # given the same config with MEAN_MINMAX and with MINMAX
    for estimator, warned in (("MEAN_MINMAX", False), ("MINMAX", True)):
        path = tmp_path / f"{estimator}.yaml"
        path.write_text(
            "gateway:\n  url: embedded\n  models: [{name: m, input_eur_per_mtok: 1, output_eur_per_mtok: 1}]\n"
            "budget:\n  cap_eur: 1\n"
            f"selection:\n  strategy: widest_ranges\nquantization:\n  range_estimator: {estimator}\n"
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tasks.config"):
            load_config(path)
        # then only MINMAX is warned of, and the warning names the strategy, the estimator and the fix
        text = caplog.text
        assert ("widest_ranges" in text and "range_estimator MINMAX" in text and "Use MEAN_MINMAX" in text) is warned, (
            f"{estimator}: {text!r}"
        )
