"""Fixtures for the data tests: a byte-level BPE tokenizer trained on the fly."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = [
    "<pad>",
    "<unk>",
    "<bos>",
    "<eos>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
]

CORPUS = [
    "Human: What is the capital of France? Assistant: The capital of France is Paris.",
    "Human: Tell me a joke. Assistant: Why did the chicken cross the road?",
    "How do I bake bread? Mix flour, water, salt and yeast, then knead and bake.",
    "The quick brown fox jumps over the lazy dog. 1 2 3 4 5 6 7 8 9 10",
    "Thanks! You are welcome. Sorry, I cannot help with that.",
] * 20


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_file):
    from jaxpref.data import HFTokenizer

    return HFTokenizer(tokenizer_file, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
