"""A digest of the code of a torch twin, recorded with each torch benchmark.

The gate judges a within-run ratio numba / torch-cpu against the same ratio in a baseline. When
the twin itself changed between the two (a fixed or faster twin), the ratio's denominator is
another program and its change says nothing of the reference: such a pair is "not gated: the
twin changed" (reports/comparison.py), which the digests of the two runs tell.

The digest covers the twin's code (its syntax tree: comments and docstrings are not the
program) and, recursively, that of the project's functions it
names (helpers of its module, a factory's closure), and the values of the plain constants it
names; torch's own code is not in it (a torch upgrade is what the ratio is there to show).
Only the imports of this module's standard library: it is also run on another commit's tree to
annotate a baseline recorded before the digests existed.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import textwrap
import types

# Changing how the digest is made changes every digest: then no pair of an older baseline is
# judged until the baseline is recorded again. The version makes that visible.
VERSION = "v1"
_PLAIN = (bool, int, float, str, bytes, type(None))


def _names(code: types.CodeType) -> set[str]:
    out = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out |= _names(c)
    return out


def _plain(value) -> bool:
    if isinstance(value, tuple | frozenset):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _code_text(fn) -> str:
    """The function's code without its comments and docstrings (an edited comment is the same
    program): its syntax tree where its source parses alone, else its source text (a lambda
    inside a call), else its bytecode."""
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return fn.__code__.co_code.hex()
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def twin_digest(fn, project: str = "suites") -> str:
    """``VERSION:`` and 16 hex digits of SHA-256 over the code ``fn`` runs (see above)."""
    h = hashlib.sha256()
    seen: set[int] = set()

    def visit(obj) -> None:
        if isinstance(obj, functools.partial):
            h.update(repr((obj.args, sorted(obj.keywords.items()))).encode())
            visit(obj.func)
            return
        if callable(obj) and not inspect.isfunction(obj):  # torch.tanh: a name, not our code
            name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
            h.update(f"{getattr(obj, '__module__', '')}.{name}".encode())
            return
        if not inspect.isfunction(obj) or id(obj) in seen:
            return
        seen.add(id(obj))
        if not (obj.__module__ or "").startswith(project):
            h.update(f"{obj.__module__}.{obj.__qualname__}".encode())
            return
        h.update(_code_text(obj).encode())
        for cell in obj.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if _plain(value):
                h.update(repr(value).encode())
            else:
                visit(value)
        for name in sorted(_names(obj.__code__)):
            value = obj.__globals__.get(name)
            if _plain(value):
                h.update(f"{name}={value!r}".encode())
            else:
                visit(value)

    visit(fn)
    return f"{VERSION}:{h.hexdigest()[:16]}"
