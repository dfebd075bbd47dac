"""Project rules a reviewer would otherwise check by hand: import direction and exact pins."""

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Stage code stays free of orchestration and tracking; tracking.py is the one MLflow edge.
EDGE_MODULES = {"tasks/tracking.py"}


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
    for path in sorted((ROOT / "tasks").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        banned = {"flows"} | (set() if relative in EDGE_MODULES else {"prefect", "mlflow"})
        if found := _imports(path) & banned:
            offenders.append(f"{relative} imports {sorted(found)}")
    assert not offenders, "imports must go flows → tasks only:\n" + "\n".join(offenders)


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
    import json

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


def test_flow_modules_import_without_heavy_libraries():
    """`prefect deploy` imports every entrypoint: litellm, torch and OpenVINO stay lazy."""
    import subprocess
    import sys

    code = (
        "import sys, flows.release_cycle, flows.ablation, flows.drift_monitor, flows.train_detector; "
        "print(','.join(m for m in ('litellm', 'torch', 'openvino', 'nncf') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"heavy modules imported by flow modules: {result.stdout.strip()}"
