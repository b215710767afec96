"""The detector's kernels built ahead of time: a one-stream command loads them without importing numba.

``cache=True`` keeps the kernels' machine code, but loading it still costs a process numba's import and its
target initialisation (which imports scipy for numba's BLAS probe): ~0.7 CPU s, more than scoring 60,000
rows. ``python -m services.detector build-kernels`` compiles :mod:`services.detector.kernels` once with
numba's ahead-of-time compiler (``numba.pycc``, needs a C compiler) into an extension module beside the
numba cache, named after the kernels' source, numba's and Python's versions: a change to any of them
leaves the build unused until it is rebuilt. A process that calls :func:`use_ahead_of_time` before the
kernels are imported (``detector score`` does) then gets the built kernels when a current build exists,
and numba's JIT (as every other process) when none does. Same code, same IEEE operations, no fastmath:
the built kernels give the JIT kernels' results bit for bit (tests/unit/test_detector_compiled.py).

The exported kernels take arrays of any layout (numba's ``A``), so a kernel must never assume a layout its caller
might not give. The compiled wrapper does not check an argument's dtype: one other than the exported signature's
crashes the process (or, of the same size, is read as the wrong type). The dtypes a caller passes are therefore kept
in :mod:`services.detector.kernels` beside the kernels (``FOREST_DTYPES``), whose source names the build.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

KERNELS_SOURCE = Path(__file__).with_name("kernels.py")
BUILD_DIR = KERNELS_SOURCE.parent / "__pycache__"
#: The kernels callers run; the helpers they call are compiled into them.
EXPORTED = ("rolling_run", "persist_run", "lof_run", "forest_run")

_wanted = False
_loaded: ModuleType | None = None


def use_ahead_of_time() -> None:
    """Load the built kernels in this process if a current build exists (call before importing the kernels)."""
    global _wanted
    _wanted = True


def build_name() -> str:
    """The extension module's name: it changes with the kernels' source, numba's version and Python's."""
    digest = hashlib.sha256(KERNELS_SOURCE.read_bytes())
    # numba's version file, found without importing numba (importlib.metadata alone costs ~50 ms)
    spec = importlib.util.find_spec("numba")
    version = Path(spec.origin).with_name("_version.py") if spec is not None and spec.origin else None
    digest.update(version.read_bytes() if version is not None and version.exists() else b"numba?")
    digest.update(sys.version.encode())
    return f"kernels_aot_{digest.hexdigest()[:16]}"


def build_path(directory: Path = BUILD_DIR) -> Path:
    return directory / f"{build_name()}{importlib.machinery.EXTENSION_SUFFIXES[0]}"


def built() -> ModuleType | None:
    """The current build of the kernels (loaded once per process), or None when there is none."""
    global _loaded
    if _loaded is None:
        _loaded = load(BUILD_DIR)
    return _loaded


def load(directory: Path) -> ModuleType | None:
    """The current build of the kernels in ``directory``, freshly loaded, or None."""
    path = build_path(directory)
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(path.name.split(".")[0], path)
    if spec is None or spec.loader is None:
        return None
    try:
        module = importlib.util.module_from_spec(spec)  # an extension module is opened here
        spec.loader.exec_module(module)
    except (ImportError, OSError):  # a damaged or foreign build: the JIT kernels serve, as without one
        return None
    return module


def njit(*args: Any, **options: Any) -> Any:
    """``numba.njit`` for :mod:`services.detector.kernels`; an exported kernel comes from the build when wanted.

    numba is imported only when a kernel is jitted: a process using the build never imports it.
    """

    bare = bool(args) and callable(args[0])

    def decorate(fn: Callable[..., Any]) -> Any:
        build = built() if _wanted else None
        if build is not None:
            # the helpers are compiled into the exported kernels: theirs stay plain (never called)
            return getattr(build, fn.__name__, fn)
        from numba import njit as jit

        return jit(*([] if bare else args), **options)(fn)

    return decorate(args[0]) if bare else decorate


def build(directory: Path = BUILD_DIR) -> Path:
    """Compile the exported kernels ahead of time into ``directory``; returns the extension module's path.

    The signatures are the JIT kernels' own after a warm-up call, every array taken as layout ``A``.
    """
    import warnings

    from numba import types
    from numba.core.errors import NumbaPendingDeprecationWarning
    from numba.core.typing import signature

    if _wanted:
        raise RuntimeError("build the kernels in a process that jits them (not after use_ahead_of_time())")
    from services.detector import kernels

    kernels.warm_up()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaPendingDeprecationWarning)  # pycc has no successor yet
        from numba.pycc import CC

    name = build_name()
    cc = CC(name)
    cc.output_dir = str(directory)
    cc.verbose = False
    for kernel in EXPORTED:
        dispatcher = getattr(kernels, kernel)
        arguments = [
            types.Array(t.dtype, t.ndim, "A") if isinstance(t, types.Array) else t for t in dispatcher.signatures[0]
        ]
        cc.export(kernel, signature(types.void, *arguments))(dispatcher.py_func)
    directory.mkdir(parents=True, exist_ok=True)
    cc.compile()
    for stale in directory.glob(f"kernels_aot_*{importlib.machinery.EXTENSION_SUFFIXES[0]}"):
        if stale.name != build_path(directory).name:
            stale.unlink(missing_ok=True)
    return build_path(directory)
