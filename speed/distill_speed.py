"""FairDistillation training speed: tokens/s and peak memory for a GPT-2-small-size and a
BERT-base-size student (random weights; the teacher is the same architecture with twice the layers,
the student keeps every other layer, so the student is 12 x 768 like GPT-2 small / BERT-base).

Each configuration runs in its own subprocess so peak RSS is its own. Numbers exclude the first
(warm-up) optimizer step. On CUDA, peak GPU memory (torch.cuda.max_memory_allocated) is reported too.

    python speed/distill_speed.py                      # CPU, both models, 3 timed steps
    python speed/distill_speed.py --device cuda --steps 10 --batch 16 --seq 128
    python speed/distill_speed.py --models gpt2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    # student size; the teacher has 2 x layers
    "gpt2": dict(hidden=768, layers=12, heads=12, vocab=50257, note="GPT-2 small (124M) student"),
    "bert": dict(hidden=768, layers=12, heads=12, vocab=30522, note="BERT-base (110M) student"),
}


def _corpus(n: int) -> list[str]:
    try:
        from fairdistill.data import find_dataset, read_jsonl

        rows = list(read_jsonl(find_dataset("bbq") / "Gender_identity.jsonl"))[: n * 4]
        texts = [" ".join(r["context"] for r in rows[i: i + 4]) for i in range(0, len(rows), 4)]
    except Exception:  # no data folder: synthetic sentences
        texts = [f"The worker number {i} said that the meeting would start at nine in the morning." * 4 for i in range(n)]
    return texts[:n]


def _tokenizer(kind: str, vocab: int, texts: list[str]):
    """A trained-here tokenizer (no downloads): byte-level BPE for GPT-2, WordPiece for BERT."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "gpt2":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=min(vocab, 4000), special_tokens=["<|endoftext|>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=min(vocab, 4000),
                                                            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def run_one(kind: str, steps: int, batch: int, seq: int, device: str) -> dict:
    import resource

    import torch
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, TrainerCallback

    from fairdistill.distill.fairdistill import prepare_fairdistill

    s = SIZES[kind]
    texts = _corpus(batch * (steps + 2))
    tok = _tokenizer(kind, s["vocab"], texts)
    torch.manual_seed(0)
    if kind == "gpt2":  # model vocab = GPT-2's 50257 (the small trained tokenizer uses the first ids)
        teacher = GPT2LMHeadModel(GPT2Config(vocab_size=s["vocab"], n_embd=s["hidden"], n_layer=2 * s["layers"],
                                             n_head=s["heads"], n_positions=max(seq, 128)))
    else:
        teacher = BertForMaskedLM(BertConfig(vocab_size=s["vocab"], hidden_size=s["hidden"],
                                             num_hidden_layers=2 * s["layers"], num_attention_heads=s["heads"],
                                             intermediate_size=4 * s["hidden"], pad_token_id=tok.pad_token_id))
    # every text is at least `seq` tokens: pad-free batches of exactly batch x seq tokens
    texts = [t for t in texts if len(tok(t)["input_ids"]) >= seq] or texts

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        job = prepare_fairdistill((teacher.to(device), tok), None, None, texts, out, max_steps=steps + 1,
                                  batch_size=batch, max_length=seq, save_steps=10_000, progress=False, device=device,
                                  callbacks=[Clock()], learning_rate=1e-5)
        job.trainer.train()
    n_student = sum(p.numel() for p in job.student.parameters())
    dt = times[-1] - times[0]
    res = {
        "model": kind, "note": s["note"], "device": device, "torch_threads": torch.get_num_threads(),
        "student_params_m": round(n_student / 1e6, 1), "teacher_layers": 2 * s["layers"], "student_layers": s["layers"],
        "batch": batch, "seq": seq, "timed_steps": steps, "seconds_per_step": round(dt / steps, 3),
        "tokens_per_s": round(batch * seq * steps / dt, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2),
    }
    if device.startswith("cuda"):
        res["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1024 ** 3, 2)
        res["mixed_precision"] = "bf16" if torch.cuda.is_bf16_supported() else "no"
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt2,bert")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write results to this file")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # subprocess mode
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a.steps, a.batch, a.seq, a.device)))
        return
    results = []
    for kind in a.models.split(","):
        cmd = [sys.executable, __file__, "--one", kind, "--steps", str(a.steps), "--batch", str(a.batch),
               "--seq", str(a.seq), "--device", a.device]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode or not line:
            print(f"{kind}: failed\n{p.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(line[-1]))
        r = results[-1]
        print(f"{r['note']:<30} {r['device']:<5} threads={r['torch_threads']} batch={r['batch']}x{r['seq']}  "
              f"{r['tokens_per_s']:>8} tok/s  {r['seconds_per_step']:>7} s/step  peak RSS {r['peak_rss_gb']} GB"
              + (f"  peak GPU {r['peak_gpu_gb']} GB" if "peak_gpu_gb" in r else ""))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
