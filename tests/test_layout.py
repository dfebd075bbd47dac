"""Project rules a reviewer would otherwise check by hand: import direction, config sections,
no side effects on import, exact pins and the dashboard's metric names."""

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
# Stage code stays free of orchestration and tracking; tracking.py is the one MLflow edge.
MLFLOW_EDGE = {"tasks/tracking.py"}
# The one function that may read the whole config tree: it records it as MLflow params.
WHOLE_CONFIG_READERS = {("tasks/tracking.py", "config_params")}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_tasks_never_import_flows_prefect_or_mlflow():
    offenders = []
    for path in _modules("tasks"):
        relative = path.relative_to(ROOT).as_posix()
        banned = {"flows", "prefect"} | (set() if relative in MLFLOW_EDGE else {"mlflow"})
        if found := _imports(path) & banned:
            offenders.append(f"{relative} imports {sorted(found)}")
    assert not offenders, "imports must go flows → tasks only, Prefect and MLflow at the edges:\n" + "\n".join(
        offenders
    )


def _whole_config_parameters(source: str, where: str, only: set[str] | None = None) -> list[str]:
    """`where:line function(parameter: annotation)` for each parameter annotated TailcalConfig."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if (where, node.name) in WHOLE_CONFIG_READERS or (only is not None and node.name not in only):
            continue
        for argument in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
            annotation = ast.unparse(argument.annotation) if argument.annotation else ""
            if "TailcalConfig" in annotation:
                found.append(f"{where}:{node.lineno} {node.name}({argument.arg}: {annotation})")
    return found


def _prefect_tasks(source: str) -> set[str]:
    return {
        node.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef)
        and any(ast.unparse(d).split("(")[0] == "task" for d in node.decorator_list)
    }


def test_stage_functions_and_prefect_tasks_take_their_config_section_not_the_whole_tree():
    """A stage that reads `TailcalConfig` hides what it depends on, and an ablation cell would
    have to copy the whole tree to vary one knob: stages take `SelectionConfig`, `ScoringSetup`, …"""
    offenders = []
    for path in _modules("tasks"):
        if path.name != "config.py":
            offenders += _whole_config_parameters(path.read_text(), path.relative_to(ROOT).as_posix())
    task_count = 0
    for path in (ROOT / "flows" / "stages.py", ROOT / "flows" / "scoring.py"):
        source = path.read_text()
        tasks = _prefect_tasks(source)
        task_count += len(tasks)
        offenders += _whole_config_parameters(source, path.relative_to(ROOT).as_posix(), only=tasks)
    assert task_count >= 10, f"expected the flows' Prefect tasks to be found, found {task_count}"
    assert not offenders, "these take TailcalConfig instead of their section:\n" + "\n".join(offenders)


def test_the_section_rule_catches_a_stage_that_takes_the_whole_tree():
    """The rule above can fail: a stage or task written the old way is caught."""
    source = (
        "@task(name='select')\ndef select(config: TailcalConfig, k: int) -> None: ...\n"
        "def quantize(ir, images, quantization: QuantizationConfig): ...\n"
    )
    found = _whole_config_parameters(source, "flows/stages.py", only=_prefect_tasks(source))
    assert found == ["flows/stages.py:2 select(config: TailcalConfig)"], f"the rule missed or over-reached: {found}"


def test_importing_tailcal_changes_no_environment_variable():
    """Importing a library must not reconfigure the process: Prefect and litellm settings are
    applied by the command line around a run, or only for the duration of an import."""
    modules = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in ("tasks", "flows")
        for path in _modules(package)
    ]
    # Libraries that set variables of their own on import (torchvision, mlflow) are imported first.
    third_party = ["torch", "torchvision", "openvino", "nncf", "mlflow", "prefect", "pyarrow", "PIL", "fastapi"]
    code = (
        "import importlib, json, os, sys\n"
        f"for name in {third_party!r}:\n"
        "    importlib.import_module(name)\n"
        "before = dict(os.environ)\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "after = dict(os.environ)\n"
        "changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))\n"
        "print(json.dumps({'changed': changed, 'litellm': 'litellm' in sys.modules}))\n"
    )
    clean_env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("PREFECT_", "LITELLM_"))}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["litellm"], "the check must have imported the scoring modules (and so litellm)"
    assert outcome["changed"] == [], f"importing tailcal changed {outcome['changed']}"


def test_flow_modules_import_without_heavy_libraries():
    """`prefect deploy` imports every entrypoint: litellm, torch and OpenVINO stay lazy."""
    code = (
        "import sys, flows.release_cycle, flows.ablation, flows.drift_monitor, flows.scoring, flows.train_detector, "
        "flows.cli; print(','.join(m for m in ('litellm', 'torch', 'openvino', 'nncf') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"heavy modules imported by flow modules: {result.stdout.strip()}"


def test_nothing_in_the_repository_points_readers_to_a_file_it_does_not_hold():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ""} or not path.is_file():
            continue
        if path == Path(__file__):
            continue
        if "DESIGN.md" in path.read_text(errors="ignore"):
            offenders.append(name)
    assert not offenders, (
        f"these cite DESIGN.md, which is not in the repository (cite docs/architecture.md): {offenders}"
    )


def test_every_declared_dependency_is_pinned_and_matches_the_lock():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            lock[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    problems = []
    for requirement in declared:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]+\])?==([^\s;]+)", requirement)
        if not match:
            problems.append(f"{requirement}: not pinned with ==")
            continue
        name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
        if lock.get(name) != match.group(3):
            problems.append(f"{requirement}: lock has {lock.get(name)}")
    assert not problems, "pyproject.toml and requirements.lock disagree:\n" + "\n".join(problems)


def test_grafana_dashboard_queries_only_metrics_the_code_exports():
    from prometheus_client import CollectorRegistry

    from tasks.scoring.metrics import ScoringMetrics

    registry = CollectorRegistry()
    ScoringMetrics.create(registry)
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    exported = {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}
    dashboard = json.loads((ROOT / "configs" / "grafana" / "tailcal-scoring.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"tailcal_[a-z_]+", target["expr"])
    }
    assert queried and queried <= exported, f"dashboard queries unknown metrics: {sorted(queried - exported)}"
