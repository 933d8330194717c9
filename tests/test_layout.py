"""Import direction between the stages, read from the source (every import, function-level ones included).

prost (the core) <- prost_export <- prost_model_repository <- prost_cli; prost_client is a leaf that server code
(the core's gallery engine included) reaches only through its contract modules (wire names, gallery file format),
which depend on nothing of ours.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"prost": "prost", "prost_export": "export", "prost_model_repository": "model_repository",
           "prost_client": "client", "prost_cli": "cli"}
CONTRACT = {"prost_client.protocol", "prost_client.gallery_format"}


def imports(package: str) -> list[tuple[str, str]]:
    """(module file, imported module) for every import statement in a package's folder."""
    found = []
    for path in sorted((ROOT / FOLDERS[package]).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(path.relative_to(ROOT).as_posix(), alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found += [(path.relative_to(ROOT).as_posix(), f"{node.module}.{alias.name}") for alias in node.names]
    return found


def offending(package: str, forbidden: set[str], allowed: set[str] = frozenset()) -> list[str]:
    return [f"{file}: {name}" for file, name in imports(package)
            if name.split(".")[0] in forbidden and not any(name == a or name.startswith(a + ".") for a in allowed)]


def test_the_scan_sees_imports():
    """The checks below would pass on an empty scan; make sure it reads real imports."""
    assert ("cli/main.py", "prost.errors.ProstError") in imports("prost_cli")
    assert any(name.startswith("prost_client.protocol") for _, name in imports("prost_model_repository"))


def test_the_core_imports_no_stage_built_on_it():
    assert offending("prost", {"prost_export", "prost_model_repository", "prost_cli"}) == []


def test_export_does_not_import_the_serving_stage():
    assert offending("prost_export", {"prost_model_repository"}) == []


@pytest.mark.parametrize("package", ["prost", "prost_export", "prost_model_repository"])
def test_server_code_reaches_the_client_only_through_its_contract(package):
    assert offending(package, {"prost_client"}, CONTRACT) == []
    assert offending(package, {"prost_cli"}) == []


def test_the_contract_modules_depend_on_nothing_of_ours():
    ours = set(FOLDERS)
    for module in CONTRACT:
        path = ROOT / "client" / f"{module.rsplit('.', 1)[1]}.py"
        tree = ast.parse(path.read_text())
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [n for n in names if n.split(".")[0] in ours], module


def test_the_client_is_a_leaf():
    """No core, export or CLI code in the client; the server's storage only where a client publishes into a local
    served repository (it must follow the server's lock protocol and write what `prost gallery build` writes)."""
    assert offending("prost_client", {"prost", "prost_export", "prost_cli"}) == []
    assert {(file, name) for file, name in imports("prost_client") if name.startswith("prost_model_repository")} == {
        ("client/client.py", "prost_model_repository.storage")}
