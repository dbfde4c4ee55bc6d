"""Train the tiny GPT-2 of ``tiny_lm/`` on Python's own help text and write it there.

Run from the repository root: ``python -m recipes.zoo.train_tiny_lm`` (a few minutes on two
CPU cores). The text is ``pydoc_data.topics``, the ~465 KB of English help that Python's
standard library ships, so nothing is downloaded. Its topics are dealt by a seeded permutation:
the first ones give ``heldout.txt`` (fidelity and perplexity), the next ``calibration.txt``
(quantization), the rest train a byte-level BPE tokenizer and the model. A passage that also
occurs in a training topic (the topics repeat each other) is dropped from both files, so no
line of either is seen in training. Writes ``tiny_lm/`` as a Hugging Face folder (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json) and prints the held-out loss and
perplexity of the trained model next to the untrained one.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent / "tiny_lm"
SEED = 0
VOCAB = 2048
# n_embd a multiple of 128: INT4 block quantization cuts the weights' rows in blocks of 32+
ARCHITECTURE = {"n_layer": 3, "n_embd": 128, "n_head": 4, "n_positions": 128}
BLOCK, BATCH, STEPS, LEARNING_RATE = 64, 16, 500, 3e-3
HELDOUT, CALIBRATION = 200, 128  # passages dealt to each file, before unseen() drops some
MAX_TOKENS = 60  # per passage: recipes read them with dataset.max_length 64
EOS = "<|endoftext|>"


def passages(text: str) -> list[str]:
    """The prose paragraphs of a topic, whitespace folded, one line each."""
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        line = " ".join(paragraph.split())
        letters = sum(c.isalpha() or c == " " for c in line)
        if 40 <= len(line) and letters >= 0.85 * len(line):
            found.append(line)
    return found


def deal_topics() -> tuple[list[str], list[str], list[str]]:
    """(held-out passages, calibration passages, training texts), from disjoint topics."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    order = np.random.default_rng(SEED).permutation(len(names))
    heldout: list[str] = []
    calibration: list[str] = []
    training: list[str] = []
    for index in order:
        text = topics[names[index]]
        if len(heldout) < HELDOUT:
            heldout += passages(text)
        elif len(calibration) < CALIBRATION:
            calibration += passages(text)
        else:
            training.append(text)
    return heldout[:HELDOUT], calibration[:CALIBRATION], training


def train_tokenizer(training: list[str]) -> Any:
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(training, vocab_size=VOCAB, min_frequency=2,
                                  special_tokens=[EOS], show_progress=False)
    return tokenizer


def shorten(tokenizer: Any, lines: list[str]) -> list[str]:
    """Each line cut at a word boundary to at most MAX_TOKENS tokens."""
    short = []
    for line in lines:
        words = line.split()
        while len(tokenizer.encode(" ".join(words)).ids) > MAX_TOKENS:
            words = words[:-1]
        short.append(" ".join(words))
    return short


def unseen(training: list[str], heldout: list[str],
           calibration: list[str]) -> tuple[list[str], list[str]]:
    """The passages that occur nowhere in the training text, nor calibration's in held-out's:
    pydoc's topics repeat each other (attribute access is in three), so dealing by topic alone
    leaves about a quarter of the held-out passages in the training text."""
    seen = " ".join(" ".join(text.split()) for text in training)
    heldout = [line for line in heldout if line not in seen]
    return heldout, [line for line in calibration if line not in seen and line not in heldout]


def blocks(tokenizer: Any, training: list[str]) -> Any:
    """The training topics as one token stream (EOS between topics), cut in BLOCK+1 windows."""
    import torch

    eos = tokenizer.token_to_id(EOS)
    stream = [t for text in training for t in [*tokenizer.encode(text).ids, eos]]
    count = (len(stream) - 1) // BLOCK
    data = torch.tensor(stream[:count * BLOCK + 1])
    return torch.stack([data[i * BLOCK:(i + 1) * BLOCK + 1] for i in range(count)])


def heldout_loss(model: Any, tokenizer: Any, lines: list[str]) -> float:
    """Mean next-token cross-entropy (nats) over every token of the held-out lines."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for line in lines:
            ids = torch.tensor([tokenizer.encode(line).ids])
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    return total / count


def train(model: Any, data: Any) -> float:
    """STEPS AdamW steps on random windows of ``data``; returns the seconds it took."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=STEPS,
                                                   pct_start=0.1)
    start = time.perf_counter()
    model.train()
    for step in range(STEPS):
        batch = data[torch.randint(len(data), (BATCH,), generator=generator)]
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.3f}, {time.perf_counter() - start:.0f} s",
                  flush=True)
    return time.perf_counter() - start


def save(model: Any, tokenizer: Any, heldout: list[str], calibration: list[str]) -> None:
    from transformers import PreTrainedTokenizerFast

    HERE.mkdir(exist_ok=True)
    model.save_pretrained(HERE, safe_serialization=True)
    (HERE / "generation_config.json").unlink(missing_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer._tokenizer, bos_token=EOS,
                                   eos_token=EOS, unk_token=EOS, pad_token=EOS,
                                   model_input_names=["input_ids", "attention_mask"],
                                   model_max_length=ARCHITECTURE["n_positions"])
    fast.save_pretrained(HERE)
    for name in ("special_tokens_map.json", "chat_template.jinja"):
        (HERE / name).unlink(missing_ok=True)
    # transformers 5 writes its own class name, which 4.x cannot load; both know this one
    settings = json.loads((HERE / "tokenizer_config.json").read_text())
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    settings.pop("backend", None)
    (HERE / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    (HERE / "heldout.txt").write_text("\n".join(heldout) + "\n")
    (HERE / "calibration.txt").write_text("\n".join(calibration) + "\n")


def main() -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    heldout, calibration, training = deal_topics()
    tokenizer = train_tokenizer(training)
    heldout, calibration = unseen(training, shorten(tokenizer, heldout),
                                  shorten(tokenizer, calibration))
    config = GPT2Config(vocab_size=tokenizer.get_vocab_size(), **ARCHITECTURE,
                        bos_token_id=tokenizer.token_to_id(EOS),
                        eos_token_id=tokenizer.token_to_id(EOS))
    model = GPT2LMHeadModel(config)
    untrained = heldout_loss(model, tokenizer, heldout)
    data = blocks(tokenizer, training)
    seconds = train(model, data)
    trained = heldout_loss(model, tokenizer, heldout)
    save(model.eval(), tokenizer, heldout, calibration)
    figures = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "training_tokens": int(data.numel()), "steps": STEPS, "train_seconds": round(seconds),
        "heldout_loss": {"untrained": round(untrained, 3), "trained": round(trained, 3)},
        "heldout_perplexity": {"untrained": round(math.exp(untrained), 1),
                               "trained": round(math.exp(trained), 1)},
        "safetensors_bytes": (HERE / "model.safetensors").stat().st_size,
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
