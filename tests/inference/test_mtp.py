"""Multi-token prediction: the MTP layer loads from V3's layout, and speculative acceptance is exact."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from inference import load_model
from inference.attention import CausalAttention
from inference.loader import CheckpointError
from inference.mtp import accept
from tests.inference.checkpoints import DEVICE

H = 48


def with_mtp(src, dst, eh_proj: torch.Tensor) -> None:
    """A copy of the 3-layer checkpoint with an MTP layer 3 in V3's layout: layer 2's block weights,
    unit enorm/hnorm, the given eh_proj, the main norm as shared_head.norm, and V3's copies of the
    embedding and head."""
    shutil.copytree(src, dst)
    t = load_file(dst / "model.safetensors")
    for name in list(t):
        if name.startswith("model.layers.2."):
            t[name.replace("model.layers.2.", "model.layers.3.")] = t[name].clone()
    t["model.layers.3.enorm.weight"] = torch.ones(H)
    t["model.layers.3.hnorm.weight"] = torch.ones(H)
    t["model.layers.3.eh_proj.weight"] = eh_proj
    t["model.layers.3.shared_head.norm.weight"] = t["model.norm.weight"].clone()
    t["model.layers.3.embed_tokens.weight"] = t["model.embed_tokens.weight"].clone()
    t["model.layers.3.shared_head.head.weight"] = t["lm_head.weight"].clone()
    save_file(t, dst / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("half", ["hidden", "embedding"])
def test_the_mtp_layer_is_loaded_and_wired_as_v3_lays_it_out(checkpoint, tmp_path, half):
    src, _ = checkpoint("v3_grouped_yarn")
    eye, zero = torch.eye(H), torch.zeros(H, H)
    # eh_proj picks one half of [enorm(embedding); hnorm(hidden)], so the other half must not matter
    eh = torch.cat((zero, eye), dim=1) if half == "hidden" else torch.cat((eye, zero), dim=1)
    with_mtp(src, tmp_path / "ckpt", eh)
    model = load_model(tmp_path / "ckpt", dtype=torch.float32, device=DEVICE, mtp=True)
    assert model.mtp is not None and model.mtp.block.self_attn.layer == 3
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 97, (1, 20), generator=g).to(DEVICE)
    positions = torch.arange(20, device=DEVICE)
    with torch.no_grad():
        hidden = model.hidden_states(ids, positions, CausalAttention())
        nxt = torch.roll(ids, -1, dims=1)
        got = model.mtp_hidden(nxt, hidden, positions, CausalAttention())
        cos, sin = model.rope(positions)
        x = model.mtp.hnorm(hidden) if half == "hidden" else model.mtp.enorm(model.embed_tokens(nxt))
        want = model.norm(model.layers[2](x, cos, sin, CausalAttention()))  # layer 2 = the MTP block's weights
    assert (got - want).abs().max().item() <= 1e-5
    assert model.mtp.eh_proj.weight.data_ptr() != model.lm_head.weight.data_ptr()
    assert model(ids).shape == (1, 20, 97)  # the main model is unchanged by loading it


def test_the_mtp_layer_is_skipped_unless_asked_for_and_named_when_absent(checkpoint, tmp_path):
    src, _ = checkpoint("v3_grouped_yarn")
    with_mtp(src, tmp_path / "ckpt", torch.zeros(H, 2 * H))
    assert load_model(tmp_path / "ckpt", dtype=torch.float32, device=DEVICE).mtp is None
    with pytest.raises(CheckpointError, match=r"missing.*model\.layers\.3\.eh_proj\.weight"):
        load_model(src, dtype=torch.float32, device=DEVICE, mtp=True)


def draws(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g), torch.rand(n, generator=g)


def test_speculative_acceptance_emits_tokens_distributed_as_the_main_model():
    p = torch.tensor([0.50, 0.05, 0.25, 0.15, 0.05])
    q = torch.tensor([0.10, 0.40, 0.20, 0.10, 0.20])  # a poor drafter: accepting blindly would give q
    n = 200_000
    g = torch.Generator().manual_seed(1)
    draft = torch.multinomial(q, n, replacement=True, generator=g)
    u, v = draws(n, seed=2)
    tokens, accepted = accept(p.expand(n, -1), q.expand(n, -1), draft, u, v)
    freq = torch.bincount(tokens, minlength=5).float() / n
    assert (freq - p).abs().max().item() < 0.005  # ~5 standard errors at n = 200k
    assert (q - p).abs().max().item() > 0.1  # so a wrong rule (e.g. always accept) would fail above
    assert abs(accepted.float().mean().item() - torch.minimum(p, q).sum().item()) < 0.005


def test_verify_draws_from_unnormalised_filtered_rows_exactly_with_keyed_uniforms():
    """The engine's form of the rule: p and q as the sampler's filters leave them (zeros where cut,
    not renormalised, with different kept masses) and both uniforms from a per-row key."""
    from inference.mtp import ACCEPT_STREAM, DRAFT_STREAM, verify
    from inference.sampler import draw, row_key

    p = torch.tensor([0.30, 0.0, 0.15, 0.05, 0.0])  # kept mass 0.5
    q = torch.tensor([0.05, 0.45, 0.20, 0.0, 0.20])  # kept mass 0.9
    n = 100_000
    keys = torch.tensor([row_key(s, 1, ACCEPT_STREAM) for s in range(n)])
    draft = draw(q.expand(n, -1), torch.tensor([row_key(s, 1, DRAFT_STREAM) for s in range(n)]))
    tokens = verify(p.expand(n, -1), q.expand(n, -1), draft, keys)
    freq = torch.bincount(tokens, minlength=5).float() / n
    assert (freq - p / p.sum()).abs().max().item() < 0.007  # ~5 standard errors at n = 100k


def test_a_good_drafter_is_accepted_more_and_a_perfect_one_always():
    p = torch.tensor([0.6, 0.3, 0.1])
    n = 50_000
    g = torch.Generator().manual_seed(3)
    u, v = draws(n, seed=4)
    draft = torch.multinomial(p, n, replacement=True, generator=g)
    tokens, accepted = accept(p.expand(n, -1), p.expand(n, -1), draft, u, v)
    assert accepted.all() and torch.equal(tokens, draft)


def test_greedy_acceptance_keeps_exactly_the_argmax():
    V = 7
    target = torch.tensor([3, 3, 0, 6])
    draft = torch.tensor([3, 2, 0, 1])
    p = torch.nn.functional.one_hot(target, V).float()
    q = torch.nn.functional.one_hot(draft, V).float()
    u, v = draws(4, seed=5)
    tokens, accepted = accept(p, q, draft, u, v)
    assert tokens.tolist() == target.tolist()
    assert accepted.tolist() == [True, False, True, False]


DEMO = __import__("pathlib").Path(__file__).resolve().parents[2] / "inference" / "demo" / "checkpoint"


@pytest.fixture(scope="module")
def demo_with_mtp():
    if not (DEMO / "mtp.safetensors").is_file():
        pytest.fail("inference/demo/checkpoint/mtp.safetensors is missing: python -m inference.demo.train_mtp")
    return load_model(DEMO, dtype=torch.float32, device="cpu", mtp=True)


def chat_prompt(text: str) -> list[int]:
    from inference.tokenizer import Tokenizer

    return Tokenizer.from_dir(DEMO).encode_chat([{"role": "user", "content": text}], add_generation_prompt=True)


@pytest.mark.parametrize("text", ["What is Levee?", "Tell me a short story."])
def test_greedy_speculative_decoding_gives_the_tokens_of_plain_decoding(demo_with_mtp, text):
    from inference.speculative import generate

    prompt = chat_prompt(text)
    plain = generate(demo_with_mtp, prompt, 40, speculate=False)
    fast = generate(demo_with_mtp, prompt, 40, speculate=True)
    assert fast.tokens == plain.tokens
    # both branches ran: some drafts kept (two tokens per forward), some replaced
    assert 0 < fast.accepted < fast.drafted
    assert fast.forwards < plain.forwards


def test_plain_decoding_matches_the_full_recompute(demo_with_mtp):
    """Guard for the test above: the contiguous-cache loop itself decodes what the model says."""
    from inference.speculative import generate

    prompt = chat_prompt("Hello")
    got = generate(demo_with_mtp, prompt, 12, speculate=False).tokens
    seq = torch.tensor([prompt])
    for _ in range(12):
        seq = torch.cat([seq, demo_with_mtp(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert got == seq[0, len(prompt):].tolist()


def test_sampled_speculative_decoding_runs_and_is_reproducible(demo_with_mtp):
    from inference.speculative import generate

    prompt = chat_prompt("Tell me a short story.")
    a = generate(demo_with_mtp, prompt, 30, speculate=True, temperature=0.8, seed=3)
    b = generate(demo_with_mtp, prompt, 30, speculate=True, temperature=0.8, seed=3)
    assert a.tokens == b.tokens and len(a.tokens) == 30 and a.drafted > 0
