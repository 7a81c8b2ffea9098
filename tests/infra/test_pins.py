"""The pins: what ships is exact and complete, the dev set agrees with it, and every import is declared.

requirements*.txt are generated from requirements*.in by `make pins` (pip-compile). These checks keep a hand
edit, a new import or a stale venv from slipping past: a redeploy installs exactly what the tests ran against.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import InvalidRequirement, Requirement

from tests.infra.bicep import ROOT

RUNTIME, DEV, CHECKOV = "requirements.txt", "requirements-dev.txt", "requirements-checkov.txt"
PIN_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)(\s+#.*)?$")
FIRST_PARTY = {"jitbroker", "lab", "tests", "bench", "jitcli", "function_app"}
# Never pinned (pip-compile leaves them out): the installer's own tooling.
INSTALLER = {"pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pin_lines(filename: str) -> list[tuple[int, str]]:
    """(line number, text) of every line that is neither blank nor a comment."""
    lines = (ROOT / filename).read_text(encoding="utf-8").splitlines()
    return [(n, line) for n, line in enumerate(lines, 1) if line.split("#")[0].strip()]


def pins(filename: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for _, line in pin_lines(filename):
        match = PIN_LINE.match(line.strip())
        assert match, f"{filename}: not an exact pin: {line!r}"
        found[canonical(match["name"])] = match["version"]
    return found


def declared(filename: str) -> dict[str, Requirement]:
    """The direct dependencies an .in file declares (its -c/-r lines are not declarations)."""
    found: dict[str, Requirement] = {}
    for line in (ROOT / filename).read_text(encoding="utf-8").splitlines():
        text = line.split(" #")[0].strip()
        if text and not text.startswith(("#", "-")):
            requirement = Requirement(text)
            found[canonical(requirement.name)] = requirement
    return found


def imported_modules(*parts: str) -> dict[str, set[str]]:
    """Every absolute third-party import under the given paths, lazy ones included: dotted name -> files.

    `from a.b import c` is recorded as `a.b.c`: c may be a module of its own, which is how a namespace package
    (`from opentelemetry import trace`) is told apart from its siblings by `distribution_of`.
    """
    found: dict[str, set[str]] = {}
    for part in parts:
        base = ROOT / part
        for path in sorted(base.rglob("*.py")) if base.is_dir() else [base]:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [f"{node.module}.{alias.name}" for alias in node.names]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        found.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    return found


@functools.cache
def _owners() -> dict[str, str]:
    """Installed source file -> the distribution that installed it, from every distribution's RECORD."""
    owners: dict[str, str] = {}
    for dist in metadata.distributions():
        for file in dist.files or []:
            if file.suffix == ".py":
                owners[file.as_posix()] = canonical(dist.metadata["Name"])
    return owners


def distribution_of(dotted: str) -> str:
    """The distribution that installed the longest importable prefix of `dotted`.

    So `azure.core.tracing.ext.*` is azure-core-tracing-opentelemetry, not azure-core; a name that nothing
    installed is taken as its own distribution's.
    """
    parts = dotted.split(".")
    for length in range(len(parts), 0, -1):
        base = "/".join(parts[:length])
        for candidate in (f"{base}/__init__.py", f"{base}.py"):
            if candidate in _owners():
                return _owners()[candidate]
    return canonical(parts[0])


def undeclared(modules: dict[str, set[str]], declared_names: set[str]) -> dict[str, str]:
    return {
        module: f"{distribution_of(module)} (imported by {', '.join(sorted(files))})"
        for module, files in sorted(modules.items())
        if canonical(distribution_of(module)) not in declared_names
    }


@pytest.mark.parametrize("filename", [RUNTIME, DEV, CHECKOV])
def test_every_line_is_an_exact_pin_or_a_comment(filename: str) -> None:
    loose = [f"{filename}:{n}: {line}" for n, line in pin_lines(filename) if not PIN_LINE.match(line.strip())]
    assert loose == [], "only `name==version` lines: regenerate with `make pins`"


@pytest.mark.parametrize("filename", [RUNTIME, DEV, CHECKOV])
def test_no_package_is_pinned_twice(filename: str) -> None:
    names = [canonical(line.split("==")[0]) for _, line in pin_lines(filename)]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_runtime_and_dev_pins_agree_on_every_shared_package() -> None:
    runtime, dev = pins(RUNTIME), pins(DEV)
    shared = runtime.keys() & dev.keys()
    disagree = {name: (runtime[name], dev[name]) for name in shared if runtime[name] != dev[name]}
    assert disagree == {}


@pytest.mark.parametrize(("source", "pinned"), [("requirements.in", RUNTIME), ("requirements-dev.in", DEV)])
def test_every_declared_dependency_is_pinned_within_its_range(source: str, pinned: str) -> None:
    versions = pins(pinned)
    outside = {
        name: f"{requirement.specifier} but pinned {versions.get(name, 'nowhere')}"
        for name, requirement in declared(source).items()
        if name not in versions or not requirement.specifier.contains(versions[name], prereleases=True)
    }
    assert outside == {}, f"{pinned} is stale against {source}: run `make pins`"


def test_the_dev_set_is_compiled_against_the_runtime_pins() -> None:
    text = (ROOT / "requirements-dev.in").read_text(encoding="utf-8")
    assert re.search(r"^-c requirements\.txt$", text, re.MULTILINE)


def test_the_functions_build_installs_neither_the_cli_nor_the_platform_worker() -> None:
    runtime = pins(RUNTIME)
    assert {"jit-cli", "jit-broker", "azure-functions-worker", "checkov"} & runtime.keys() == set()
    assert "azure-functions-worker" not in declared("requirements.in")


def test_every_import_of_the_broker_is_a_declared_runtime_dependency() -> None:
    modules = imported_modules("jitbroker", "function_app.py")
    assert modules, "found no third-party import in the broker"
    assert undeclared(modules, set(declared("requirements.in"))) == {}, "declare it in requirements.in"


def test_every_import_of_the_lab_tests_and_bench_is_declared() -> None:
    modules = imported_modules("lab", "tests", "bench")
    names = set(declared("requirements.in")) | set(declared("requirements-dev.in"))
    assert undeclared(modules, names) == {}, "declare it in requirements-dev.in (or requirements.in)"


def test_the_import_checker_maps_namespace_packages_one_by_one() -> None:
    assert distribution_of("azure.mgmt.core.polling.arm_polling.ARMPolling") == "azure-mgmt-core"
    assert distribution_of("azure.core.exceptions.HttpResponseError") == "azure-core"
    assert distribution_of("azure.core.tracing.ext.opentelemetry_span.OpenTelemetrySpan") == (
        "azure-core-tracing-opentelemetry"
    )
    assert distribution_of("opentelemetry.sdk.trace.export") == "opentelemetry-sdk"
    assert distribution_of("opentelemetry.trace") == "opentelemetry-api"
    assert distribution_of("jwt.algorithms") == "pyjwt"
    assert distribution_of("fastapi.responses.JSONResponse") == "fastapi"
    assert distribution_of("not_installed_anywhere.x") == "not-installed-anywhere"


def test_the_cli_dependencies_are_pinned_for_the_venv_it_is_installed_into() -> None:
    """`make setup` installs the CLI with --no-deps, so its dependencies must come from the pinned sets."""
    project = tomllib.loads((ROOT / "cli" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    versions = pins(RUNTIME) | pins(DEV)
    missing = {
        text: versions.get(canonical(Requirement(text).name), "not pinned")
        for text in project["dependencies"]
        if not Requirement(text).specifier.contains(versions.get(canonical(Requirement(text).name), "0"))
    }
    assert missing == {}


def test_this_environment_has_exactly_the_pinned_versions() -> None:
    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "missing"

    pinned = pins(RUNTIME) | pins(DEV)
    wrong = {name: (pin, installed(name)) for name, pin in pinned.items() if installed(name) != pin}
    assert wrong == {}, "the venv drifted from the pins: run `make setup`"


def unsatisfied(versions: dict[str, str]) -> list[str]:
    """Every requirement of a pinned (and installed) package that the same pins do not satisfy."""
    problems: list[str] = []
    for name in sorted(versions):
        for text in metadata.requires(name) or []:
            try:
                requirement = Requirement(text)
            except InvalidRequirement:
                problems.append(f"{name}: unreadable requirement {text!r}")
                continue
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            wanted = canonical(requirement.name)
            if wanted in INSTALLER:
                continue
            if wanted not in versions:
                problems.append(f"{name} needs {text} but it is not pinned")
            elif not requirement.specifier.contains(versions[wanted], prereleases=True):
                problems.append(f"{name} needs {text} but it is pinned {versions[wanted]}")
    return problems


def test_the_runtime_pins_are_complete_and_consistent_on_their_own() -> None:
    """The Functions build installs requirements.txt alone: it must hold every dependency of what it lists."""
    assert unsatisfied(pins(RUNTIME)) == []


def test_runtime_and_dev_pins_together_are_complete_and_consistent() -> None:
    assert unsatisfied(pins(RUNTIME) | pins(DEV)) == []
