"""Tokenization against the tokenizer's own output, chat template, masks, truncation, buckets."""

import importlib.util
import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from jaxpref.data import (
    ChatTemplate,
    DataError,
    Message,
    PreferencePair,
    RankedExample,
    SentencePieceTokenizer,
    TokenizeConfig,
    UnpairedExample,
    bucket_length,
    collate_pairs,
    collate_ranked,
    collate_sequences,
    read_preferences,
    tokenize_pair,
    tokenize_ranked,
    tokenize_unpaired,
)


def _conv(*turns):
    return tuple(Message(r, c) for r, c in turns)


@pytest.fixture(scope="module")
def raw(tokenizer_file):
    return Tokenizer.from_file(tokenizer_file)


def _enc(raw, text):
    return raw.encode(text, add_special_tokens=False).ids


def test_special_ids(tokenizer, raw):
    assert tokenizer.bos_id == raw.token_to_id("<bos>")
    assert tokenizer.eos_id == raw.token_to_id("<eos>")
    assert tokenizer.pad_id == raw.token_to_id("<pad>")
    assert tokenizer.vocab_size == raw.get_vocab_size()


def test_string_pair_matches_tokenizer_output(tokenizer, raw):
    pair = PreferencePair("Human: Tell me a joke.", " Why did the chicken cross?", " No.")
    t = tokenize_pair(pair, tokenizer, TokenizeConfig(max_length=64), index=5)
    bos, eos = raw.token_to_id("<bos>"), raw.token_to_id("<eos>")
    assert t.prompt_ids.tolist() == [bos, *_enc(raw, pair.prompt)]
    assert t.chosen_ids.tolist() == [*_enc(raw, pair.chosen), eos]
    assert t.rejected_ids.tolist() == [*_enc(raw, pair.rejected), eos]
    assert t.chosen_mask.tolist() == [1] * len(t.chosen_ids)
    assert raw.decode(t.chosen_ids.tolist(), skip_special_tokens=True) == pair.chosen
    assert t.index == 5 and not t.truncated
    assert t.prompt_ids.dtype == np.int32


def test_chat_template_matches_tokenizer_output_and_masks(tokenizer, raw):
    pair = PreferencePair(
        _conv(("system", "Be brief."), ("user", "Tell me a joke.")),
        _conv(("assistant", "Why did the chicken cross the road?")),
        _conv(("assistant", "No.")),
    )
    t = tokenize_pair(pair, tokenizer, TokenizeConfig(max_length=128))
    rendered_prompt = (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nTell me a joke.<|end|>\n<|assistant|>\n"
    )
    rendered_chosen = "Why did the chicken cross the road?<|end|>\n"
    bos, eos = raw.token_to_id("<bos>"), raw.token_to_id("<eos>")
    assert t.prompt_ids.tolist() == [bos, *_enc(raw, rendered_prompt)]
    assert t.chosen_ids.tolist() == [*_enc(raw, rendered_chosen), eos]
    full = raw.decode([*t.prompt_ids.tolist(), *t.chosen_ids.tolist()], skip_special_tokens=False)
    assert full == "<bos>" + rendered_prompt + rendered_chosen + "<eos>"


@pytest.mark.parametrize(
    "mode,want",
    [
        ("final_assistant", "Sure, 6.<|end|>\n<eos>"),
        ("assistant", "It is 4.<|end|>\nSure, 6.<|end|>\n<eos>"),
        (
            "all",
            "It is 4.<|end|>\n<|user|>\nAnd 3+3?<|end|>\n<|assistant|>\nSure, 6.<|end|>\n<eos>",
        ),
    ],
)
def test_multi_turn_completion_mask(tokenizer, mode, want):
    chosen = _conv(("assistant", "It is 4."), ("user", "And 3+3?"), ("assistant", "Sure, 6."))
    rejected = _conv(("assistant", "5"), ("user", "And 3+3?"), ("assistant", "7"))
    pair = PreferencePair(_conv(("user", "2+2?")), chosen, rejected)
    t = tokenize_pair(pair, tokenizer, TokenizeConfig(max_length=128, completion_mask=mode))
    trained = t.chosen_ids[t.chosen_mask == 1].tolist()
    assert tokenizer.decode(trained) == want
    # the trained tokens are contiguous runs that follow the message structure
    assert tokenizer.decode(t.chosen_ids.tolist()).endswith("Sure, 6.<|end|>\n<eos>")


def test_truncation_modes(tokenizer, raw):
    prompt = "The quick brown fox jumps over the lazy dog. " * 4
    pair = PreferencePair(prompt, " 1 2 3 4 5 6 7 8 9 10" * 3, " Sorry.")
    full = [tokenizer.bos_id, *_enc(raw, prompt)]
    comp = [*_enc(raw, pair.chosen), tokenizer.eos_id]
    cfg = dict(max_length=24, max_prompt_length=10)
    t = tokenize_pair(pair, tokenizer, TokenizeConfig(**cfg, truncation="keep_end"))
    assert t.prompt_ids.tolist() == [full[0], *full[-9:]]
    assert len(comp) > 14
    assert t.chosen_ids.tolist() == comp[:14] and t.truncated
    assert t.rejected_ids.tolist() == [*_enc(raw, pair.rejected), tokenizer.eos_id]
    t = tokenize_pair(pair, tokenizer, TokenizeConfig(**cfg, truncation="keep_start"))
    assert t.prompt_ids.tolist() == full[:10]
    assert t.chosen_ids.tolist() == comp[:14]
    with pytest.raises(DataError) as e:
        tokenize_pair(pair, tokenizer, TokenizeConfig(**cfg, truncation="error"))
    assert e.value.reason == "too_long"


def test_too_long_record_reports_path_and_line(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    rows = [
        {"prompt": "Q", "chosen": " a", "rejected": " b"},
        {"prompt": "Q", "chosen": " a " * 50, "rejected": " b"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, _ = read_preferences(str(path))
    cfg = TokenizeConfig(max_length=16, truncation="error")
    tokenize_pair(pairs[0], tokenizer, cfg)
    with pytest.raises(DataError) as e:
        tokenize_pair(pairs[1], tokenizer, cfg)
    assert (e.value.reason, e.value.path, e.value.line) == ("too_long", str(path), 2)


def test_truncation_that_makes_completions_identical_is_reported(tokenizer):
    pair = PreferencePair("Q", " 1 2 3 4 5 6 7 8", " 1 2 3 4 5 6 7 9")
    with pytest.raises(DataError) as e:
        tokenize_pair(pair, tokenizer, TokenizeConfig(max_length=6, max_prompt_length=2))
    assert e.value.reason == "identical_completions"


def test_collate_layout_and_buckets(tokenizer):
    cfg = TokenizeConfig(max_length=64, buckets=(8, 16, 32, 64))
    pairs = [
        PreferencePair("Tell me a joke.", " Why?", " No."),
        PreferencePair("How do I bake bread?", " Mix flour and water.", " Buy some."),
    ]
    toks = [tokenize_pair(p, tokenizer, cfg, index=i) for i, p in enumerate(pairs)]
    b = collate_pairs(toks, pad_id=tokenizer.pad_id, buckets=cfg.padded_buckets, batch_size=3)
    longest = max(len(t.prompt_ids) + max(len(t.chosen_ids), len(t.rejected_ids)) for t in toks)
    t_len = bucket_length(longest, cfg.padded_buckets)
    assert b.input_ids.shape == (6, t_len) and b.input_ids.dtype == np.int32
    for i, t in enumerate(toks):
        for row, ids, mask in (
            (i, t.chosen_ids, t.chosen_mask),
            (3 + i, t.rejected_ids, t.rejected_mask),
        ):
            n = len(t.prompt_ids) + len(ids)
            np.testing.assert_array_equal(b.input_ids[row, :n], np.concatenate([t.prompt_ids, ids]))
            assert (b.input_ids[row, n:] == tokenizer.pad_id).all()
            np.testing.assert_array_equal(b.attention_mask[row], np.arange(t_len) < n)
            np.testing.assert_array_equal(b.positions[row, :n], np.arange(n))
            want_loss = np.zeros(t_len, np.int32)
            want_loss[len(t.prompt_ids) : n] = mask
            np.testing.assert_array_equal(b.loss_mask[row], want_loss)
            assert b.lengths[row] == n
    np.testing.assert_array_equal(b.pair_mask, [1, 1, 0])
    np.testing.assert_array_equal(b.index, [0, 1, -1])
    assert not b.attention_mask[2].any() and not b.attention_mask[5].any()
    np.testing.assert_array_equal(b.segment_ids, b.attention_mask)


def test_collate_fixed_shapes_from_few_buckets(tokenizer):
    cfg = TokenizeConfig(max_length=32)
    assert cfg.padded_buckets == (16, 32)
    shapes = set()
    for n in range(1, 12):
        p = PreferencePair("Q" * n, " a" * n, " b")
        t = tokenize_pair(p, tokenizer, cfg)
        shapes.add(collate_pairs([t], pad_id=0, buckets=cfg.padded_buckets).input_ids.shape)
    assert shapes <= {(2, 16), (2, 32)}


def test_unpaired_and_ranked_collate(tokenizer):
    cfg = TokenizeConfig(max_length=32, buckets=(32,))
    ex = [UnpairedExample("Q", " good", True), UnpairedExample("Q", " bad", False)]
    seqs = [tokenize_unpaired(e, tokenizer, cfg) for e in ex]
    b = collate_sequences(seqs, pad_id=0, buckets=(32,), batch_size=3, desirable=[True, False])
    assert b.input_ids.shape == (3, 32)
    np.testing.assert_array_equal(b.desirable, [1, 0, 0])
    np.testing.assert_array_equal(b.row_mask, [1, 1, 0])
    r = RankedExample("Q", (" a", " b", " c"), (1.0, 3.0, 2.0))
    toks = tokenize_ranked(r, tokenizer, cfg)
    rb = collate_ranked([(toks, r.scores), None], num_completions=4, pad_id=0, buckets=(32,))
    assert rb.input_ids.shape == (8, 32)
    np.testing.assert_array_equal(rb.scores, [[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(rb.completion_mask, [[1, 1, 1, 0], [0, 0, 0, 0]])
    # row k * B + b holds completion k of prompt b
    n = len(toks[1].prompt_ids) + len(toks[1].completion_ids)
    np.testing.assert_array_equal(
        rb.input_ids[2, :n], np.concatenate([toks[1].prompt_ids, toks[1].completion_ids])
    )


def test_config_validation():
    with pytest.raises(ValueError, match="max_prompt_length"):
        TokenizeConfig(max_length=8, max_prompt_length=8)
    with pytest.raises(ValueError, match="buckets"):
        TokenizeConfig(max_length=64, buckets=(16, 32))
    with pytest.raises(ValueError, match="truncation"):
        TokenizeConfig(truncation="middle")
    with pytest.raises(ValueError):
        bucket_length(65, (16, 64))


def test_template_pieces():
    t = ChatTemplate(header="[{role}]", end="|")
    pieces = t.prompt_pieces(_conv(("user", "hi")))
    assert pieces == [("[user]", "header"), ("hi|", "user"), ("[assistant]", "header")]
    comp = t.completion_pieces(_conv(("assistant", "a"), ("user", "b"), ("assistant", "c")))
    assert "".join(s for s, _ in comp) == "a|[user]b|[assistant]c|"


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is not None, reason="installed")
def test_sentencepiece_missing_gives_clear_import_error(tmp_path):
    with pytest.raises(ImportError, match="sentencepiece"):
        SentencePieceTokenizer(str(tmp_path / "m.model"))


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is None, reason="not installed")
def test_sentencepiece_matches_processor(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(["hello world", "the quick brown fox", "preference data"] * 50))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "m"), vocab_size=40, model_type="bpe"
    )
    tok = SentencePieceTokenizer(str(tmp_path / "m.model"))
    proc = spm.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))
    t = tokenize_pair(PreferencePair("hello", " world", " fox"), tok, TokenizeConfig(max_length=32))
    assert t.chosen_ids.tolist()[:-1] == proc.encode(" world")


# --------------------------------------------------------------------------------------------
# Truncation and padding stored in a tokenizer.json are ignored: TokenizeConfig alone cuts.

HH_PROMPT = (
    "\n\nHuman: The quick brown fox jumps over the lazy dog. How do I bake bread? Tell me a "
    "joke.\n\nAssistant:"
)


@pytest.fixture(scope="module")
def exported_file(tmp_path_factory, tokenizer_file):
    """The test tokenizer saved the way pipelines export it: truncating to 5, padding to 40."""
    raw = Tokenizer.from_file(tokenizer_file)
    raw.enable_truncation(max_length=5)
    raw.enable_padding(length=40, pad_id=raw.token_to_id("<pad>"), pad_token="<pad>")
    path = tmp_path_factory.mktemp("exported") / "tokenizer.json"
    raw.save(str(path))
    stored = json.loads(path.read_text())
    assert stored["truncation"]["max_length"] == 5 and stored["padding"] is not None
    return str(path)


def test_stored_truncation_and_padding_are_ignored(exported_file, raw):
    from jaxpref.data import HFTokenizer

    exported = Tokenizer.from_file(exported_file)
    assert len(exported.encode(HH_PROMPT, add_special_tokens=False).ids) == 40  # cut + padded
    tok = HFTokenizer(exported_file, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    full = _enc(raw, HH_PROMPT)
    assert len(full) > 5
    assert tok.encode(HH_PROMPT) == full
    assert tok.encode("Thanks!") == _enc(raw, "Thanks!")  # no padding
    assert tok.tokenizer.truncation is None and tok.tokenizer.padding is None
    assert tok.ignored_settings["truncation"]["max_length"] == 5
    assert tok.ignored_settings["padding"]["length"] == 40

    pair = PreferencePair(HH_PROMPT, " Mix flour, water, salt and yeast.", " Sorry.")
    t = tokenize_pair(pair, tok, TokenizeConfig(max_length=128))
    assert not t.truncated
    assert tok.decode(t.prompt_ids.tolist()) == "<bos>" + HH_PROMPT  # ends with the marker
    assert tok.decode(t.chosen_ids.tolist()) == pair.chosen + "<eos>"


def test_tokenizer_object_with_truncation_is_copied_not_modified(exported_file, raw):
    from jaxpref.data import HFTokenizer

    exported = Tokenizer.from_file(exported_file)
    tok = HFTokenizer(exported, eos_token="<eos>")
    assert tok.encode(HH_PROMPT) == _enc(raw, HH_PROMPT)
    assert exported.truncation is not None and exported.padding is not None
    clean = HFTokenizer(raw, eos_token="<eos>")
    assert clean.tokenizer is raw and clean.ignored_settings == {}


def test_jaxpref_truncation_is_flagged_and_counted(exported_file):
    from jaxpref.data import HFTokenizer, ReadReport, preference_pipeline

    tok = HFTokenizer(exported_file, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    cfg = TokenizeConfig(max_length=24, max_prompt_length=12, buckets=(24,))
    long = PreferencePair(HH_PROMPT, " 1 2 3 4 5 6 7 8 9 10" * 3, " Sorry.")
    short = PreferencePair("Hi", " Thanks!", " Sorry.")
    assert tokenize_pair(long, tok, cfg).truncated
    assert not tokenize_pair(short, tok, cfg).truncated
    report = ReadReport()
    ds = preference_pipeline(
        [short, long, short, short],
        batch_size=2,
        tokenizer=tok,
        config=cfg,
        shuffle=False,
        shard_index=0,
        shard_count=1,
        report=report,
    )
    batches = list(ds)
    assert len(batches) == 2
    assert (report.num_records, report.num_truncated, report.num_skipped) == (4, 1, 0)
    assert "1 truncated" in report.summary()
    assert ReadReport.from_dict(report.to_dict()).num_truncated == 1
    assert ReadReport(num_truncated=2).merge(report).num_truncated == 3
