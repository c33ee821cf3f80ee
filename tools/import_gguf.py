"""Import a GGUF file of a Llama-architecture model as a Hugging Face model folder.

    python tools/import_gguf.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out hf_smollm2
    python tools/import_gguf.py --gguf model.Q4_K_M.gguf --out hf_model --dtype bfloat16

The weights are dequantised by transformers (a quantised GGUF becomes full-precision
tensors: the rounding of the quantisation stays, it is not undone) and saved as
model.safetensors with config.json, generation_config.json and the tokenizer
(tokenizer.json, tokenizer_config.json and the GGUF's chat template), so that
``LlamaForCausalLM.from_pretrained(out)``, ``AutoTokenizer.from_pretrained(out)`` and
tools/convert_hf.py --from-hf read it. --dtype is the dtype of the saved weights
(float32 by default: the dequantised values exactly; bfloat16 halves the file).

The folder is written to ``<out>.tmp`` and renamed to ``<out>`` when complete. Needs
transformers, gguf and accelerate: pip install 'titan-jepa[gguf]'.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import shutil
import sys
import time
from pathlib import Path

DEPENDENCIES = ("transformers", "gguf", "accelerate")
INSTALL = "pip install 'titan-jepa[gguf]'"
GGUF_MAGIC = b"GGUF"
# config keys LlamaConfig sets itself, and the quantisation that no longer applies
DROP_KEYS = ("quantization_config", "transformers_version", "_name_or_path", "architectures", "dtype")


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def log(msg: str) -> None:
    print(f"[import_gguf] {msg}", flush=True)


def check_dependencies() -> None:
    missing = [m for m in DEPENDENCIES if importlib.util.find_spec(m) is None]
    if missing:
        fail(f"importing GGUF files needs {', '.join(missing)}: {INSTALL}")


def check_gguf(path: Path) -> str:
    """The GGUF's ``general.architecture``; fails unless the file is a readable GGUF of a Llama."""
    if not path.exists():
        fail(f"--gguf '{path}' does not exist")
    if not path.is_file():
        fail(f"--gguf '{path}' is not a file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        fail(f"cannot read --gguf '{path}': {e.strerror or e}")
    if magic != GGUF_MAGIC:
        fail(f"'{path}' is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
    try:
        arch = read_architecture(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:  # a truncated or corrupt header
        fail(f"'{path}' is not a readable GGUF file ({type(e).__name__}: {_first_line(e)})")
    if arch is None:
        fail(f"'{path}' has no general.architecture metadata; only Llama GGUF files can be imported")
    if arch != "llama":
        fail(f"'{path}' holds a '{arch}' model; only the 'llama' architecture can be imported")
    return arch


# GGUF metadata value types (gguf's GGUFValueType) -> their size in bytes; 8 is a string,
# 9 an array (element type, count, elements)
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def read_architecture(path: Path) -> str | None:
    """``general.architecture`` from the GGUF header, read key by key (the gguf package parses
    every field, the whole vocabulary included, which takes seconds)."""
    import struct

    with open(path, "rb") as f:
        def read(n: int) -> bytes:
            b = f.read(n)
            if len(b) != n:
                raise ValueError("the file ends inside its header")
            return b

        def string() -> bytes:
            return read(struct.unpack("<Q", read(8))[0])

        def skip(kind: int) -> None:
            if kind in _SCALAR:
                read(_SCALAR[kind])
            elif kind == 8:
                string()
            elif kind == 9:
                inner, count = struct.unpack("<IQ", read(12))
                if inner in _SCALAR:
                    f.seek(_SCALAR[inner] * count, 1)
                else:
                    for _ in range(count):
                        skip(inner)
            else:
                raise ValueError(f"unknown metadata value type {kind}")

        read(4)  # magic, checked by the caller
        _version, _tensors, n_kv = struct.unpack("<IQQ", read(20))
        for _ in range(n_kv):
            key, kind = string(), struct.unpack("<I", read(4))[0]
            if key == b"general.architecture" and kind == 8:
                return string().decode("utf-8")
            skip(kind)
    return None


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        fail(f"--out '{out}' exists and is not a folder; remove it or choose another --out")
    if out.is_dir() and any(out.iterdir()):
        fail(f"--out '{out}' exists and is not empty; remove it or choose another --out")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


@contextlib.contextmanager
def gguf_parsed_once():
    """transformers reads the GGUF three times (tokenizer, config, weights), each time with a new
    ``gguf.GGUFReader``, whose metadata parse is pure Python (~6 s for SmolLM2's 49k-token
    vocabulary), and builds gguf's tensor-name map once per module of the model (~400 times,
    the same map). While loading, both are made once per distinct arguments and reused
    (read-only); the written folder is byte-identical."""
    import gguf

    real = {name: getattr(gguf, name) for name in ("GGUFReader", "get_tensor_name_map")}

    def once(make):
        made = {}

        def get(*args, **kwargs):
            key = (tuple(str(a) for a in args), tuple(sorted(kwargs.items())))
            if key not in made:
                made[key] = make(*args, **kwargs)
            return made[key]
        return get

    for name, make in real.items():
        setattr(gguf, name, once(make))
    try:
        yield
    finally:
        for name, make in real.items():
            setattr(gguf, name, make)


def load_gguf(path: Path):
    """(model, tokenizer) of a GGUF file, dequantised to float32 by transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        with gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # an unsupported quantisation or tokenizer: say what transformers said
        fail(f"transformers cannot load '{path}': {type(e).__name__}: {_first_line(e)}")
    return model, tokenizer


def plain_llama(model, dtype):
    """A LlamaForCausalLM with ``model``'s weights and config, minus the quantisation mark
    (transformers refuses to save a model loaded from a GGUF)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = {k: v for k, v in model.config.to_dict().items() if k not in DROP_KEYS and not k.startswith("_")}
    config = LlamaConfig(**conf)
    with torch.device("cpu"):
        plain = LlamaForCausalLM(config)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain = plain.to(dtype).eval()
    gen = plain.generation_config
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(model.generation_config, key, None)
        setattr(gen, key, value if value is not None else getattr(config, key, None))
    return plain


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", required=True, help="the .gguf file of a Llama-architecture model")
    p.add_argument("--out", required=True, help="the Hugging Face folder to write (must not exist or be empty)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="dtype of the saved weights (default float32)")
    args = p.parse_args(argv)
    gguf_path, out = Path(args.gguf), Path(args.out)

    check_dependencies()
    check_gguf(gguf_path)
    check_out(out)
    start = time.time()
    log(f"reading {gguf_path}")
    import torch
    from safetensors import safe_open

    model, tokenizer = load_gguf(gguf_path)
    plain = plain_llama(model, getattr(torch, args.dtype))
    del model
    tmp = out.with_name(out.name + ".tmp")
    if tmp.is_dir():  # left by a killed run
        shutil.rmtree(tmp)
    elif tmp.exists():
        tmp.unlink()
    try:
        log(f"writing {tmp} ({args.dtype})")
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for f in tmp.iterdir():
            f.chmod(0o644)  # safetensors writes its files private (0600); a model folder is shared
        n_tensors = 0
        for f in sorted(tmp.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                n_tensors += len(list(st.keys()))
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_params = sum(t.numel() for t in plain.parameters())
    log(f"wrote {n_tensors} tensors, {n_params:,} parameters to {out} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
