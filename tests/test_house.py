"""The house rules a newcomer relies on: the size budget and the public API at the package root.

Budget: no module over 400 lines and no function over 60 (from its ``def`` to its last line) in
``featurestore/``, ``transforms/`` and ``workers/``.  A module is exempt when the comment or
docstring at its top, or at the top of its package's ``__init__.py``, says why it is over the
"size budget" (those words).  ``PENDING`` lists what is over budget today in files whose owners
have not split them yet: those may shrink, never grow.

Run ``python tests/test_house.py`` to print every module and function over budget.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("featurestore", "transforms", "workers")
MODULE_LINES = 400
FUNCTION_LINES = 60
TOP_LINES = 15  # how far down "the top" of a module reaches
REASON = "size budget"

#: over budget, awaiting their owners: "path" (module lines) or "path:function" -> lines today
PENDING: dict[str, int] = {}


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _says_why(path: Path) -> bool:
    """The top of the module, or of its package's ``__init__.py`` up to the package root, names the budget."""
    candidates = [path] + [d / "__init__.py" for d in path.parents if d != ROOT and ROOT in d.parents]
    return any(c.is_file() and REASON in " ".join(" ".join(c.read_text().splitlines()[:TOP_LINES]).lower().split())
               for c in candidates)


def over_budget() -> dict[str, int]:
    """``path`` or ``path:function`` -> lines, for every module and function over budget and not exempt."""
    found: dict[str, int] = {}
    for path in _modules():
        if _says_why(path):
            continue
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        if (n := len(text.splitlines())) > MODULE_LINES:
            found[rel] = n
        for node in ast.walk(ast.parse(text, filename=rel)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                span = node.end_lineno - node.lineno + 1
                if span > FUNCTION_LINES:
                    found[f"{rel}:{node.name}"] = max(span, found.get(f"{rel}:{node.name}", 0))
    return found


def test_modules_and_functions_keep_the_size_budget():
    found = over_budget()
    new = {k: n for k, n in found.items() if k not in PENDING}
    grown = {k: (PENDING[k], n) for k, n in found.items() if k in PENDING and n > PENDING[k]}
    assert new == {}, (f"over the budget ({MODULE_LINES} lines a module, {FUNCTION_LINES} a function): {new}; "
                       f"split them, or say why at the top of the module (the words {REASON!r})")
    assert grown == {}, f"grown past their recorded size (recorded, now): {grown}"


def test_the_checker_sees_an_oversized_function(tmp_path, monkeypatch):
    """The budget test can fail: a 61-line function in a scanned package is reported."""
    pkg = tmp_path / "workers"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LINES - 1))
    (pkg / "big.py").write_text(f"def big():\n{body}\n    return x0\n")
    (pkg / "fine.py").write_text(f'"""Over the size\nbudget: generated."""\n\ndef big():\n{body}\n    return 0\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert over_budget() == {"workers/big.py:big": FUNCTION_LINES + 1}


def test_the_public_api_imports_from_the_package_root():
    code = ("from featurestore import FeatureStore, FeatureView, Entity; "
            "print(FeatureStore.__name__, FeatureView.__name__, Entity.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["FeatureStore", "FeatureView", "Entity"]


if __name__ == "__main__":
    for key, lines in sorted(over_budget().items(), key=lambda kv: -kv[1]):
        print(f"{lines:5d}  {key}{'  (pending)' if key in PENDING else ''}")
