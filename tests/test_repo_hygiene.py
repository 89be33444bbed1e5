"""Loading never unpickles (RELIABILITY.md C6, CWE-502): a check of every module of the package.

Parsed with ast (so docstrings that say "no pickle" are fine):
- no import of pickle, cPickle, _pickle, dill, cloudpickle, shelve, marshal or joblib;
- every numpy.load(...) passes allow_pickle=False explicitly (the default, but explicit survives
  a future default change and shows the reader the decision);
- every torch.load(...) passes weights_only=True (PyTorch's restricted unpickler);
- no eval/exec of anything.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "python", "deepkern")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def package_files():
    out = []
    for d, _, files in os.walk(PACKAGE):
        out += [os.path.join(d, f) for f in files if f.endswith(".py")]
    return sorted(out)


def _dotted(node):
    """'np.load' for the expression np.load (None for anything else)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _kw_is(call, name, value):
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value
               for k in call.keywords)


def problems(source, path="<string>"):
    """Every unsafe-loading construct in `source`, as 'path:line: what'."""
    tree = ast.parse(source, path)
    found = []
    numpy_names = {"np", "numpy"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{path}:{node.lineno}: import {a.name}")
                if a.name == "numpy":
                    numpy_names.add(a.asname or "numpy")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in UNSAFE_MODULES:
                found.append(f"{path}:{node.lineno}: from {node.module} import ...")
            if node.module == "numpy" and any(a.name == "load" for a in node.names):
                found.append(f"{path}:{node.lineno}: 'from numpy import load' hides np.load from this check")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name is None:
                continue
            head, _, tail = name.rpartition(".")
            if tail == "load" and head in numpy_names and not _kw_is(node, "allow_pickle", False):
                found.append(f"{path}:{node.lineno}: {name}(...) without allow_pickle=False")
            if name == "torch.load" and not _kw_is(node, "weights_only", True):
                found.append(f"{path}:{node.lineno}: torch.load(...) without weights_only=True")
            if name in ("eval", "exec"):
                found.append(f"{path}:{node.lineno}: {name}(...)")
    return found


def test_the_checker_finds_what_it_must():
    bad = """
import pickle
from joblib import load
import numpy as onp
a = onp.load("f.npz")
b = np.load("f.npz", allow_pickle=True)
c = torch.load("m.pt")
d = torch.load("m.pt", weights_only=False)
e = eval("1")
"""
    good = '''
"""Docstrings may say pickle, allow_pickle=True and torch.load(x) freely."""
import numpy as np
a = np.load("f.npz", allow_pickle=False)
c = torch.load("m.pt", weights_only=True)
def load(x): return x
load("x")
'''
    assert len(problems(bad)) == 7, problems(bad)
    assert problems(good) == []


def test_package_exists():
    assert os.path.isfile(os.path.join(PACKAGE, "__init__.py"))
    assert len(package_files()) >= 5


@pytest.mark.parametrize("path", package_files(), ids=lambda p: os.path.relpath(p, PACKAGE))
def test_no_unsafe_loading_in_the_package(path):
    with open(path, encoding="utf-8") as f:
        assert problems(f.read(), os.path.relpath(path, ROOT)) == []
