"""Reading saved Core ML packages: the one place that imports coremltools and loads a program.

coremltools is the optional `export` dependency: imported only when a package is written or
read, and through `import_coremltools`, which first filters its import-time noise.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coremltools.converters.mil.mil import Function

WEIGHTS_DIR = Path("Data", "com.apple.CoreML", "weights")


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


def load_program(package_path: Path) -> tuple[Any, Function]:
    """The model spec and the MIL function Core ML would run, read from a saved package."""
    ct = import_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load

    if not package_path.is_dir():
        raise FileNotFoundError(f"no .mlpackage at {package_path}")
    spec = ct.models.MLModel(str(package_path), skip_model_load=True).get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{package_path} is a {spec.WhichOneof('Type')} model, not an ML Program")
    program = load(
        spec, spec.specificationVersion, file_weights_dir=str(package_path / WEIGHTS_DIR)
    )
    return spec, program.functions[spec.description.defaultFunctionName or "main"]


