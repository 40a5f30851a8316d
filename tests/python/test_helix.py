"""The Python binding (python/helix_py.cpp) against the engine and the CLI: tokens, streams,
cancellation, errors, threads and the GIL. Run by ctest (python.helix) with PYTHONPATH set to the
build folder and HELIX_CLI naming the helix binary."""
import array
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import time

import pytest

import helix

HELIX_CLI = os.environ.get("HELIX_CLI", "")
SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def engine():
    with helix.Engine(model="tiny-llama", workers=2, kv_capacity=8192) as e:
        yield e


def test_generate_equals_helix_generate_and_the_stream(engine):
    prompt = [3, 14, 15, 92, 65]
    tokens = engine.generate(prompt, max_tokens=10)
    assert len(tokens) == 10
    if HELIX_CLI:
        out = subprocess.run([HELIX_CLI, "generate", "--model", "tiny-llama", "--prompt",
                              ",".join(map(str, prompt)), "--steps", "10", "--json"],
                             check=True, capture_output=True, text=True).stdout
        assert json.loads(out)["tokens"] == tokens
    events = list(engine.stream(prompt, max_tokens=10))
    assert [e.token for e in events] == tokens
    assert [e.index for e in events] == list(range(10))
    assert events[-1].last and events[-1].finish_reason == "length"
    assert not any(e.last for e in events[:-1])


def test_stop_tokens_and_sampling(engine):
    prompt = [1, 2, 3]
    greedy = engine.generate(prompt, max_tokens=8)
    stopped = list(engine.stream(prompt, max_tokens=8, stop_token_ids=[greedy[2]]))
    assert [e.token for e in stopped] == greedy[:3]
    assert stopped[-1].finish_reason == "stop_token"
    # The noise is keyed by (seed, request, position): sampled tokens are valid ids, and a
    # temperature this high over 40 positions does not reproduce the greedy choice everywhere.
    sampled = engine.generate(prompt, max_tokens=40, temperature=5.0, seed=7)
    assert len(sampled) == 40 and all(0 <= t < engine.vocab for t in sampled)
    assert sampled != engine.generate(prompt, max_tokens=40)


def test_cancel_ends_the_stream_and_frees_its_kv(engine):
    before = engine.stats()["cancelled"]
    stream = engine.stream([5, 6, 7], max_tokens=4000)
    seen = []
    for event in stream:
        seen.append(event)
        if len(seen) == 3:
            stream.cancel()
    assert seen[-1].last and seen[-1].finish_reason == "cancelled"
    stats = engine.stats()
    assert stats["cancelled"] == before + 1
    deadline = time.monotonic() + 10
    while any(w["kv_used_blocks"] for w in engine.stats()["workers"]):
        assert time.monotonic() < deadline, "KV blocks still held after the cancel"
        time.sleep(0.01)


def test_bad_requests_raise_value_error_naming_the_field(engine):
    with pytest.raises(ValueError, match="prompt"):
        engine.generate([], max_tokens=4)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate([engine.vocab], max_tokens=4)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.generate([1], max_tokens=0)
    with pytest.raises(helix.Error) as too_big:
        engine.generate([1], max_tokens=engine.max_request_tokens + 1)
    assert too_big.value.code == "resource_exhausted"
    assert engine.generate([1, 2], max_tokens=2)  # the engine still serves


def test_waiting_releases_the_gil(engine):
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    counter = threading.Thread(target=count)
    counter.start()
    time.sleep(0.05)
    start = ticks
    engine.generate([9, 8, 7], max_tokens=1500)
    during = ticks - start
    stop.set()
    counter.join()
    assert during > 1000, f"the counting thread ran {during} times during generate()"


def test_threads_generate_at_once_and_get_their_own_tokens(engine):
    prompts = [[i, i + 1, i + 2] for i in range(8)]
    alone = [engine.generate(p, max_tokens=12) for p in prompts]
    together = [None] * len(prompts)

    def run(i):
        together[i] = engine.generate(prompts[i], max_tokens=12)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def test_stats_and_a_closed_engine():
    e = helix.Engine(model="tiny-llama", workers=1)
    stats = e.stats()
    for key in ("layout", "submitted", "completed", "cancelled", "failed", "active", "queued",
                "steps", "tokens_generated", "workers", "healthy"):
        assert key in stats
    assert stats["healthy"] and len(stats["workers"]) == 1
    e.close()
    with pytest.raises(ValueError, match="closed"):
        e.generate([1], max_tokens=1)


def test_a_bad_config_raises_naming_the_field():
    with pytest.raises(ValueError, match="num_workers|workers"):
        helix.Engine(model="tiny-llama", workers=100000)
    with pytest.raises(helix.Error, match="no-such-model") as unknown:
        helix.Engine(model="no-such-model")
    assert unknown.value.code == "not_found"


def test_the_example_agent_loop_runs():
    env = dict(os.environ)
    out = subprocess.run([sys.executable, os.path.join(SOURCE_DIR, "examples", "python",
                                                       "agent_loop.py"),
                          "--agents", "3", "--turns", "2", "--answer-tokens", "6"],
                         check=True, capture_output=True, text=True, env=env, timeout=300).stdout
    assert "agent 0:" in out and "1 answer(s) cancelled" in out
    assert "requests completed" in out


def write_checkpoint(directory, vocab):
    """A Llama checkpoint of tests/fixtures/hf-tiny's shape with `vocab` rows, random F32 weights
    (a plain safetensors file written here), so that a fixture tokenizer fits its vocabulary."""
    with open(os.path.join(SOURCE_DIR, "tests", "fixtures", "hf-tiny", "llama-bf16",
                           "config.json")) as f:
        config = json.load(f)
    config["vocab_size"] = vocab
    config.pop("torch_dtype", None)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    kv = hidden // config["num_attention_heads"] * config["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": [vocab, hidden], "lm_head.weight": [vocab, hidden],
              "model.norm.weight": [hidden]}
    for layer in range(config["num_hidden_layers"]):
        pre = f"model.layers.{layer}."
        shapes.update({pre + "input_layernorm.weight": [hidden],
                       pre + "post_attention_layernorm.weight": [hidden],
                       pre + "self_attn.q_proj.weight": [hidden, hidden],
                       pre + "self_attn.k_proj.weight": [kv, hidden],
                       pre + "self_attn.v_proj.weight": [kv, hidden],
                       pre + "self_attn.o_proj.weight": [hidden, hidden],
                       pre + "mlp.gate_proj.weight": [inter, hidden],
                       pre + "mlp.up_proj.weight": [inter, hidden],
                       pre + "mlp.down_proj.weight": [hidden, inter]})
    rng = random.Random(5)
    header, blobs, offset = {}, [], 0
    for name in sorted(shapes):
        count = 1
        for d in shapes[name]:
            count *= d
        values = array.array("f", ([1.0] * count if name.endswith("norm.weight") else
                                   [rng.uniform(-0.1, 0.1) for _ in range(count)]))
        blob = values.tobytes()
        header[name] = {"dtype": "F32", "shape": shapes[name],
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)


def test_text_in_and_out_with_the_checkpoints_tokenizer(tmp_path):
    tok_dir = os.path.join(SOURCE_DIR, "tests", "fixtures", "tokenizers", "llama3-bpe")
    with open(os.path.join(tok_dir, "tokenizer.json")) as f:
        tj = json.load(f)
    vocab = max(list(tj["model"]["vocab"].values()) + [t["id"] for t in tj["added_tokens"]]) + 1
    write_checkpoint(str(tmp_path), vocab)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, name), str(tmp_path))
    with helix.Engine(checkpoint=str(tmp_path), workers=2) as engine:
        assert engine.tokenizer["vocab_size"] == vocab
        text = engine.generate("Hello, wörld! 🤖", max_tokens=12)
        assert isinstance(text, str)
        pieces = [e.text for e in engine.stream("Hello, wörld! 🤖", max_tokens=12)]
        assert "".join(pieces) == text  # whole characters in every piece, the same text
        ids = engine.generate([1, 2, 3], max_tokens=4)
        assert isinstance(ids, list) and len(ids) <= 4
    with helix.Engine(model="tiny-llama", workers=1) as plain:
        assert plain.tokenizer is None
        with pytest.raises(ValueError, match="no tokenizer"):
            plain.generate("hello", max_tokens=2)
