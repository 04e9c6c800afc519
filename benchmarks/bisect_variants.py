"""The bisect's launch variants (benchmarks/bisect_window_attention.py): context managers that
patch the window-attention launchers for one run (one unit per program, one pipeline stage, the
other warp count, NaN scratch, integer specialisation off), the variants that change the process
environment (the CUDA toolkit's ptxas), and the ptxas versions the table names. Needs torch,
triton and lfvila only: it runs on a bare GPU image beside the bisect.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import shutil
import subprocess
import tempfile

import triton

from lfvila.kernels._buffers import poisoned_buffers
from lfvila.kernels.window_attn import triton_impl

# ----------------------------------------------------------------------------------------------
# Variants: context managers that patch the launchers for one run


@contextlib.contextmanager
def _patched(obj, name, value):
    """obj.name = value inside (this script runs standalone: benchmarks/ is not a package
    on its path, so launch_count's twin is not importable here)."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _launch_override(**changes):
    """Every launch-settings function of triton_impl with `changes` applied to its dict."""
    stack = contextlib.ExitStack()
    for fname in ("fwd_launch", "bwd_launch", "dq_bias_launch"):
        original = getattr(triton_impl, fname)

        def patched(*args, _original=original, **kwargs):
            settings = dict(_original(*args, **kwargs))
            for key, fn in changes.items():
                settings[key] = fn(settings.get(key))
            return settings

        stack.enter_context(_patched(triton_impl, fname, patched))
    return stack


def _one_unit():
    # every launcher sizes its grid with _programs(units, ...): as many programs as units
    return _patched(triton_impl, "_programs", lambda units, *args, **kwargs: units)


# no-int-spec: the kernels triton_impl launches, as shipped (read at import, before any patch)
NO_INT_SPEC_KERNELS = (
    "_fwd_kernel", "_bwd_fused_kernel", "_bwd_dq_bias_kernel", "_bwd_dkdv_kernel",
)  # fmt: skip
_SHIPPED_KERNELS = {name: getattr(triton_impl, name) for name in NO_INT_SPEC_KERNELS}
INT_COUNTS = ("total_windows", "units", "units_per_program", "units_per_chunk", "heads", "chunks")
_REWRAPPED: dict[str, tuple[object, list[str]]] = {}


def int_arguments(kernel) -> list[str]:
    """A kernel's non-constexpr integer arguments by name: strides (s_*, g_*) and counts."""
    fn = getattr(kernel, "fn", kernel)  # JITFunction and InterpretedFunction keep the function
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if "constexpr" not in str(p.annotation)
        and (p.name.startswith(("s_", "g_")) or p.name in INT_COUNTS)
    ]


def no_int_spec_kernels() -> dict[str, tuple[object, list[str]]]:
    """{triton_impl name: (the shipped kernel re-wrapped with do_not_specialize over its integer
    arguments, those names)}, built once (a JITFunction caches its compiled binaries).
    `triton.jit(fn, do_not_specialize=...)` takes names in triton 3.6 and 3.8; under
    TRITON_INTERPRET it returns an InterpretedFunction (which ignores the list)."""
    if not _REWRAPPED:
        for name, kernel in _SHIPPED_KERNELS.items():
            names = int_arguments(kernel)
            _REWRAPPED[name] = (triton.jit(kernel.fn, do_not_specialize=names), names)
    return _REWRAPPED


def _no_int_spec():
    stack = contextlib.ExitStack()
    for name, (kernel, _) in no_int_spec_kernels().items():
        stack.enter_context(_patched(triton_impl, name, kernel))
    return stack


@contextlib.contextmanager
def _needs_env(variant: str, key: str):
    """An env-changing variant runs in a child process whose parent set `key`."""
    if key not in os.environ:
        raise RuntimeError(f"{variant} runs in its own process with {key} set (by the parent)")
    yield


VARIANTS = {
    "baseline": lambda: contextlib.nullcontext(),
    "one-unit": _one_unit,
    "stages1": lambda: _launch_override(num_stages=lambda s: 1),
    "warps": lambda: _launch_override(num_warps=lambda w: 8 if (w or 4) == 4 else 4),
    "nan-scratch": poisoned_buffers,
    "mask0": lambda: contextlib.nullcontext(),  # input variant: mask_value 0
    "no-bias": lambda: contextlib.nullcontext(),  # input variant: no table
    "toolkit-ptxas": lambda: _needs_env("toolkit-ptxas", "TRITON_PTXAS_PATH"),
    "no-int-spec": _no_int_spec,
}
# Variants that change the process environment: always run in a child process of their own.
ENV_VARIANTS = ("toolkit-ptxas",)


# ----------------------------------------------------------------------------------------------
# ptxas: Triton's bundled binary and the CUDA toolkit's


def ptxas_version(path: str | None) -> str | None:
    """'13.0 (V13.0.88)' from `path --version`, or None when it does not run."""
    if not path:
        return None
    try:
        text = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release ([\d.]+), V([\d.]+)", text)
    return f"{found.group(1)} (V{found.group(2)})" if found else None


def bundled_ptxas() -> str:
    """Triton's own ptxas (what it runs unless TRITON_PTXAS_PATH names another)."""
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def resolved_ptxas() -> str:
    """The ptxas this process's Triton would run, with its version (knobs of triton >= 3.4)."""
    try:
        tool = triton.knobs.nvidia.ptxas
        return f"{tool.path} {tool.version}"
    except Exception as exc:  # noqa: BLE001 - a report, not a requirement
        return f"unknown ({type(exc).__name__})"


def find_toolkit_ptxas() -> str | None:
    """The machine's CUDA-toolkit ptxas: on PATH, in $CUDA_HOME/bin, $CUDA_PATH/bin or
    /usr/local/cuda/bin; never Triton's bundled one. None when there is none that runs."""
    bundled = os.path.realpath(bundled_ptxas())
    candidates = [shutil.which("ptxas")]
    candidates += [os.path.join(os.environ[v], "bin", "ptxas")
                   for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]  # fmt: skip
    candidates.append("/usr/local/cuda/bin/ptxas")
    for path in candidates:
        if path and os.path.isfile(path) and os.path.realpath(path) != bundled:
            if ptxas_version(path):
                return path
    return None


def variant_env(variant: str) -> tuple[dict | None, str | None]:
    """(extra environment for the variant's child process, None) or (None, why it cannot run)."""
    if variant == "toolkit-ptxas":
        path = find_toolkit_ptxas()
        if path is None:
            return None, "no toolkit ptxas"
        cache = tempfile.mkdtemp(prefix="bisect-toolkit-ptxas-cache-")
        return dict(TRITON_PTXAS_PATH=path, TRITON_PTXAS_BLACKWELL_PATH=path,
                    TRITON_CACHE_DIR=cache), None  # fmt: skip
    return {}, None


def ptxas_notes(device: str) -> str:
    bundled = bundled_ptxas()
    toolkit = find_toolkit_ptxas()
    text = (
        f"ptxas: Triton's bundled {bundled} {ptxas_version(bundled) or '(does not run)'}; "
        f"toolkit {toolkit} {ptxas_version(toolkit)}"
        if toolkit
        else f"ptxas: Triton's bundled {bundled} {ptxas_version(bundled) or '(does not run)'}; "
        "no toolkit ptxas found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)"
    )
    text += f"; the other variants' Triton runs {resolved_ptxas()}"
    if device != "cuda":
        text += " (interpreter: no ptxas runs)"
    return text
