"""Packaging for sdedge.

The design card's top-level folders are mapped onto one import namespace with ``package_dir``:

========== ====================
folder     import name
========== ====================
sdedge/    sdedge              (training core, CLI; needs torch for train/export)
export/    sdedge.export       (checkpoint -> bundle; needs torch + onnx)
runtime/   sdedge.runtime      (bundle reader, backends, AnytimeSession, server; numpy + onnxruntime)
calibrate/ sdedge.calibrate    (temperatures, thresholds, profiles, plots; numpy + runtime)
common/    sdedge.common       (errors, atomic writes, host names, digests, JSON, dataset readers; numpy only)
sdedge/native/ sdedge.native   (the installed native core: libsdedge.so, sdedge.h, CMake/pkg-config files)
========== ====================

The native core (``native/``, C++17 behind the C API of ``native/include/sdedge/sdedge.h``) is built by
CMake as part of ``build_py`` and installed into the ``sdedge.native`` package (for an editable install
into the source tree's ``sdedge/native/include`` and ``lib``, git-ignored). ``SDEDGE_BUILD_NATIVE``:
``auto`` (default: try, warn and install without it on failure), ``1`` (required), ``0`` (skip). See
``native/setup_build.py``.

``pip install .[runtime]`` gives a torch-free device install; ``pip install .[all]`` everything.
"""
import importlib.util
import os

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py as _build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _native_build(target):
    """Build the native core into ``target`` (native/setup_build.py; standard library only)."""
    spec = importlib.util.spec_from_file_location("_sdedge_native_setup_build",
                                                  os.path.join(HERE, "native", "setup_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_native(target)


class build_py(_build_py):
    """The pure-Python packages as usual, then the native core into the ``sdedge.native`` package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            target = os.path.join(HERE, "sdedge", "native")          # editable: the source tree
        else:
            target = os.path.join(self.build_lib, "sdedge", "native")  # wheel: the build folder
        _native_build(target)


class BinaryDistribution(Distribution):
    """Wheels carry libsdedge.so, so they are platform wheels, not py3-none-any."""

    def has_ext_modules(self):
        return True


RUNTIME = ["numpy>=1.24", "onnxruntime>=1.17"]
# grpcio serves gRPC; tritonclient[grpc] carries the generated KServe v2 / Triton service messages it answers with
SERVE = ["starlette>=0.37", "uvicorn>=0.36", "httptools>=0.6", "uvloop>=0.19; sys_platform != 'win32'", "prometheus-client>=0.20", "grpcio>=1.60", "tritonclient[grpc]>=2.40"]
TRAIN = [
    "torch>=2.2,<=2.14.1",
    "torchvision>=0.17,<=0.29.1",
    "onnx>=1.16",
    "onnxscript>=0.1",
    "tqdm>=4.60",
    "scikit-learn>=1.3",
    "torch-pruning>=1.5",
]
PLOT = ["matplotlib>=3.7"]
IMAGES = ["pillow>=10"]
TEST = ["pytest>=8", "hypothesis>=6", "tritonclient[http,grpc]>=2.40", "httpx>=0.27", "atheris>=2.3; python_version<'3.13'"]

setup(
    name="sdedge",
    version="0.1.0",
    description="Self-distilled multi-exit CNNs for anytime inference on edge devices",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    package_dir={
        "sdedge": "sdedge",
        "sdedge.export": "export",
        "sdedge.runtime": "runtime",
        "sdedge.calibrate": "calibrate",
        "sdedge.common": "common",
    },
    packages=[
        "sdedge",
        "sdedge.models",
        "sdedge.data",
        "sdedge.losses",
        "sdedge.train",
        "sdedge.commands",
        "sdedge.export",
        "sdedge.runtime",
        "sdedge.runtime.backends",
        "sdedge.runtime.server",
        "sdedge.calibrate",
        "sdedge.common",
        "sdedge.native",
    ],
    cmdclass={"build_py": build_py},
    distclass=BinaryDistribution,
    zip_safe=False,
    install_requires=["numpy>=1.24"],
    extras_require={
        "runtime": RUNTIME + IMAGES,
        "serve": RUNTIME + SERVE,
        "train": RUNTIME + TRAIN + IMAGES,
        "plot": PLOT,
        "tensorrt": ["cuda-python>=12"],
        "test": TEST,
        "all": RUNTIME + SERVE + TRAIN + PLOT + IMAGES + TEST,
    },
    entry_points={"console_scripts": ["sdedge=sdedge.cli:main"]},
)
