"""The code stays readable in one sitting (issue 14): no module over 500 lines and no function
over 60 lines of code (docstrings, comments and blank lines not counted) in lowlight_tf/,
data_prep/ and tools/."""
import ast
import os

from conftest import ROOT  # pylint: disable=import-error

MAX_MODULE_LINES = 500
MAX_FUNCTION_CODE_LINES = 60


def _sources():
    """Yield (relative path, text) of every Python source of the three packages and tools."""
    for package in ("lowlight_tf", "data_prep", "tools"):
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(names):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    head = f.read(64)
                is_tool = package == "tools" and "." not in name and head.startswith(b"#!")
                if name.endswith(".py") or is_tool:
                    with open(path, encoding="utf-8") as f:
                        yield os.path.relpath(path, ROOT), f.read()


def code_lines(lines, node):
    """Lines of code of a function node: not blank, not a comment, not its docstring."""
    skip = set()
    first = node.body[0]
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        skip = set(range(first.lineno, first.end_lineno + 1))
    return sum(1 for number in range(node.lineno, node.end_lineno + 1)
               if number not in skip and lines[number - 1].strip()
               and not lines[number - 1].strip().startswith("#"))


def test_code_lines_counts_only_code():
    source = 'def f():\n    """Doc\n    string."""\n    # comment\n\n    x = 1\n    return x\n'
    node = ast.parse(source).body[0]
    assert code_lines(source.splitlines(), node) == 3  # def, x = 1, return


def test_modules_and_functions_stay_small():
    too_long = []
    sources = list(_sources())
    assert len(sources) > 50 and any(path.startswith("tools") for path, _ in sources)
    for path, text in sources:
        lines = text.splitlines()
        if len(lines) > MAX_MODULE_LINES:
            too_long.append(f"{path}: {len(lines)} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                count = code_lines(lines, node)
                if count > MAX_FUNCTION_CODE_LINES:
                    too_long.append(f"{path}:{node.lineno} {node.name}: {count} lines of code")
    assert not too_long, "split these (issue 14):\n" + "\n".join(too_long)
