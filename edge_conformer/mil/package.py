"""Reading saved Core ML packages: the one place that imports coremltools and loads a program.

coremltools is the optional `export` dependency: imported only when a package is written or
read, and through `import_coremltools`, which first filters its import-time noise.

Reading never writes: the spec file is found through Manifest.json and parsed as protobuf.
(`coremltools.models.MLModel`, even with skip_model_load, opens the package through
libmodelpackage, which rewrites Manifest.json: a published package must stay untouched by the
code that checks it.)
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coremltools.converters.mil.mil import Function

MANIFEST_FILE = "Manifest.json"
PACKAGE_DATA_DIR = "Data"  # Manifest item paths are relative to it
# Core ML resolves "@model_path/weights/..." against the folder that holds the spec file.
WEIGHTS_DIR_NAME = "weights"


class _ExpectedCoremltoolsNoise(logging.Filter):
    """Drops coremltools log lines that say nothing about this conversion.

    - "Torch version X has not been tested with coremltools": it compares version numbers only;
      whether conversion of *this* graph works is what tests/test_ane_graph.py checks.
    - "Failed to load _ML...: No module named 'coremltools.libcoremlpython'" off macOS: the
      Core ML runtime exists only on Apple platforms, so prediction is unavailable by design.
      On macOS the same line means a broken install, so it is kept there.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "has not been tested with coremltools" in message:
            return False
        runtime_missing = "No module named 'coremltools.libcoremlpython'" in message
        return not (runtime_missing and sys.platform != "darwin")


_NOISE_FILTER = _ExpectedCoremltoolsNoise()


def import_coremltools() -> ModuleType:
    # The filter must be installed before the first import: the version check runs at import.
    coreml_log = logging.getLogger("coremltools")
    coreml_log.addFilter(_NOISE_FILTER)
    # Its INFO lines (one per converted and per removed op, thousands for a model) would bury
    # export.py's own progress display whenever the root logger is at INFO, as Hydra sets it.
    coreml_log.setLevel(logging.WARNING)
    import coremltools

    return coremltools


def model_spec_path(package_path: Path) -> Path:
    """The package's root model spec file, as its Manifest.json names it."""
    manifest_path = package_path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no .mlpackage at {package_path} (no {MANIFEST_FILE})")
    manifest = json.loads(manifest_path.read_text())
    try:
        root_item = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
        spec_path = package_path / PACKAGE_DATA_DIR / root_item["path"]
    except KeyError as error:
        raise ValueError(f"{manifest_path} names no root model (no key {error})") from error
    if not spec_path.is_file():
        raise FileNotFoundError(f"{manifest_path} names {spec_path}, which does not exist")
    return spec_path


def load_program(package_path: Path) -> tuple[Any, Function]:
    """The model spec and the MIL function Core ML would run, read from a saved package.

    Only reads: no file of the package is written or has its timestamps changed.
    """
    import_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load
    from coremltools.proto import Model_pb2

    spec_path = model_spec_path(Path(package_path))
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{package_path} is a {spec.WhichOneof('Type')} model, not an ML Program")
    program = load(
        spec,
        spec.specificationVersion,
        file_weights_dir=str(spec_path.parent / WEIGHTS_DIR_NAME),
    )
    return spec, program.functions[spec.description.defaultFunctionName or "main"]
