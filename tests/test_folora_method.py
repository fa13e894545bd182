"""FoLoRA's calibration on a tiny model: the proxy sampler, the covariance hooks, and the method's wiring."""

import pytest
import torch
from omegaconf import OmegaConf

from folora.calibration import covariance
from folora.calibration.covariance import accumulate, find_input_groups, token_batches
from folora.calibration.proxy import sample_proxy
from folora.fo_lora import FoLoRA
from folora.methods.base import linear_layer_names
from folora.models import load_model
from tests.conftest import REPO, method_context, method_from_conf, proxy_config


@pytest.fixture(scope="module")
def tiny():
    return load_model(OmegaConf.load(REPO / "conf/model/tiny-random.yaml"))


def folora(**options) -> FoLoRA:
    """conf/method/folora.yaml with `options` (a `proxy` or `calibration` block merged into the YAML's)."""
    method = method_from_conf("folora", **options)
    assert isinstance(method, FoLoRA)
    return method


def sample(tiny, cache_dir, **options):
    cfg = proxy_config(num_sequences=12, length=10, batch_size=5, **options)
    return sample_proxy(tiny.model, tiny.tokenizer, cfg, model_fingerprint=tiny.fingerprint, cache_dir=cache_dir,
                        device=torch.device("cpu"))


@pytest.mark.parametrize("start", ["bos", "random_token", "seeds"])
def test_proxy_sampling_is_deterministic_distinct_and_cached(tiny, tmp_path, start):
    first = sample(tiny, tmp_path / "a", start=start)
    second = sample(tiny, tmp_path / "b", start=start)
    assert first.sequences == second.sequences and not first.cached
    assert len({tuple(s) for s in first.sequences}) == 12
    assert first.stats["sequences"] == 12 and 0 < first.stats["distinct_2"] <= 1
    again = sample(tiny, tmp_path / "a", start=start)
    assert again.cached and again.sequences == first.sequences
    other_seed = sample(tiny, tmp_path / "a", start=start, seed=1)
    assert not other_seed.cached and other_seed.sequences != first.sequences


def test_proxy_config_errors_are_clear():
    from folora.errors import FoloraError

    with pytest.raises(FoloraError, match="proxy.start"):
        proxy_config(start="nowhere").validate()


def test_layers_reading_the_same_input_share_a_covariance(tiny):
    names = linear_layer_names(tiny.model, folora().lora_config)
    probe = next(token_batches([[1, 2, 3, 4]], 1, 0))
    groups = find_input_groups(tiny.model, names, probe)
    members = {tuple(sorted(n.rsplit(".", 1)[-1] for n in g.members)) for g in groups}
    assert members == {("k_proj", "q_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",)}
    assert len(groups) == 4 * tiny.model.config.num_hidden_layers


def test_covariance_equals_a_direct_computation_over_unpadded_tokens(tiny):
    names = linear_layer_names(tiny.model, folora().lora_config)
    batch = next(token_batches([[5, 6, 7, 8, 9], [10, 11]], 2, tiny.tokenizer.pad_token_id))
    groups = find_input_groups(tiny.model, names, batch)
    covariances, tokens = accumulate(tiny.model, groups, [batch], "test")
    assert tokens == 7
    down = next(g for g in groups if g.key.endswith("layers.1.mlp.down_proj"))
    seen = {}
    module = dict(tiny.model.named_modules())[down.key]
    def capture(module, args):
        seen.setdefault("x", args[0].detach().double())

    handle = module.register_forward_pre_hook(capture)
    with torch.no_grad():
        tiny.model(**batch)
    handle.remove()
    x = seen["x"][batch["attention_mask"].bool()]
    torch.testing.assert_close(covariances[down.key].double(), x.T @ x / 7, atol=1e-4, rtol=1e-4)


def test_the_covariance_pass_skips_the_output_head_without_changing_a_covariance(tiny):
    names = linear_layer_names(tiny.model, folora().lora_config)
    batch = next(token_batches([[5, 6, 7, 8, 9], [10, 11, 12]], 2, tiny.tokenizer.pad_token_id))
    groups = find_input_groups(tiny.model, names, batch)
    head_rows = []
    handle = tiny.model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: head_rows.append(args[0].shape[-2]))
    covariances, _ = accumulate(tiny.model, groups, [batch], "test")
    handle.remove()
    assert head_rows == [1]   # the head saw one position, not all 5
    sums = {g.key: torch.zeros(g.dim, g.dim) for g in groups}
    with torch.no_grad(), covariance._accumulating(tiny.model, groups, sums, [batch["attention_mask"]]):
        tiny.model(**batch)   # every position through the head, as before
    assert all(torch.equal(covariances[key], total / 8) for key, total in sums.items())   # 8 unpadded tokens


def test_prepare_pairs_every_adapter_with_its_group_basis_and_reports_live_statistics(tiny, tmp_path):
    method = folora(proxy={"num_sequences": 8, "length": 8, "batch_size": 4}, calibration={"task_examples": 4})
    examples = [{"input_ids": list(range(3, 20)), "labels": list(range(3, 20))} for _ in range(4)]
    phases = []

    def phase(name):
        phases.append(name)
        from contextlib import nullcontext
        return nullcontext()

    ctx = method_context(tiny, tmp_path, examples, phase=phase)
    model = method.prepare(load_model(OmegaConf.load(REPO / "conf/model/tiny-random.yaml")).model, ctx)
    assert len(method.pairs) == 7 * tiny.model.config.num_hidden_layers
    assert all(p.startswith("calibration/") for p in phases)
    for a, _, basis in method.pairs:
        assert basis.V.shape[0] == a.shape[1]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = method.optimizer(params, OmegaConf.create({"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.0}))
    out = model(input_ids=torch.tensor([examples[0]["input_ids"]]), labels=torch.tensor([examples[0]["labels"]]))
    out.loss.backward()
    optimizer.step()
    method.on_step(0)
    stats = method.step_metrics()
    assert {"proxy_penalty", "task_utility", "gate_a_mean", "gate_a_open", "gate_b_mean"} <= set(stats)
    assert stats["proxy_penalty"] > 0 and 0 < stats["gate_a_mean"] < 1
    assert method.summary()["calibration"]["proxy"]["sequences"] == 8


def test_runs_that_differ_only_in_training_options_share_one_calibration(tiny, tmp_path):
    """κ, the gate and A's initialization only steer training: a run that changes them finds the calibration another
    run computed (folora/calibration/cache.py) and restores it bit for bit, and trains exactly as with its own; a
    change to what the calibration reads (the damping, the proxy, the seed, the task examples) computes anew."""
    from folora.experiment.caches import shared_calibration

    examples = [{"input_ids": list(range(3, 20)), "labels": list(range(3, 20))} for _ in range(4)]
    options = {"proxy": {"num_sequences": 8, "length": 8, "batch_size": 4}, "calibration": {"task_examples": 4}}

    def context(seed=0, train=examples, cache_dir=tmp_path):
        return method_context(tiny, cache_dir, train, seed=seed)

    def fresh():
        return load_model(OmegaConf.load(REPO / "conf/model/tiny-random.yaml")).model

    def prepared(method, ctx):
        shared = shared_calibration(method, fresh(), ctx, tiny.fingerprint)
        ctx.calibration = shared.state
        model = method.prepare(fresh(), ctx)
        if shared.state is None:
            from folora.calibration import cache
            cache.save(ctx.cache_dir, shared.key, method.calibration_state())
        return shared, model

    first = folora(kappa=1.0, **options)
    shared, _ = prepared(first, context())
    assert shared.state is None and shared.path.is_file()
    second = folora(kappa=4.0, gate="hard", a_init="spectral", gate_b=False, **options)
    reused, _ = prepared(second, context())
    assert reused.key == shared.key and reused.state is not None
    for key, basis in first.bases.items():
        assert torch.equal(second.bases[key].V, basis.V) and torch.equal(second.bases[key].lam, basis.lam)

    # a cached calibration trains exactly as the computed one (here with its proxy sampled anew, in another cache):
    # calibrating draws nothing from the global random state that A's initialization then draws from
    torch.manual_seed(0)
    computed_method = folora(**options)
    computed_method.prepare(fresh(), context(cache_dir=tmp_path / "empty"))
    torch.manual_seed(0)
    cached_method = folora(**options)
    hit, _ = prepared(cached_method, context())
    assert hit.state is not None
    for (a1, b1, _), (a2, b2, _) in zip(computed_method.pairs, cached_method.pairs, strict=True):
        assert torch.equal(a1, a2) and torch.equal(b1, b2)

    for other, ctx in ((folora(damping=1e-3, **options), context()),
                       (folora(proxy={"num_sequences": 6, "length": 8, "batch_size": 4}, calibration={"task_examples": 4}),
                        context()),
                       (folora(**options), context(seed=1)),
                       (folora(**options), context(train=[dict(e, input_ids=e["input_ids"][:-1]) for e in examples]))):
        assert shared_calibration(other, fresh(), ctx, tiny.fingerprint).key != shared.key


def test_ungated_folora_in_weight_coordinates_is_lora(tiny, tmp_path):
    """κ = 0 with `coordinates: weight` reproduces LoRA's loss curve (the same initialization, Adam's own steps)."""
    from folora.training.loop import batches, make_trainer, training_step
    from folora.training.rng import seed_everything
    from tests.conftest import composed, model_and_task

    cfg, loaded, task = model_and_task(composed("model=tiny-random", "task.sizes.train=32"))
    train_cfg = OmegaConf.merge(cfg.train, {"steps": 6, "lr": 5e-3})
    curves = {}
    for name, method in (("lora", method_from_conf("lora")),
                         ("folora", folora(kappa=0.0, coordinates="weight",
                                           proxy={"num_sequences": 8, "length": 8, "batch_size": 4}))):
        seed_everything(0)
        model = method.prepare(load_model(cfg.model).model, method_context(loaded, tmp_path, task.train))
        trainer = make_trainer(model.train(), method, train_cfg, torch.device("cpu"))
        stream = batches(task.train, 4, loaded.tokenizer.pad_token_id, seed=0)
        curves[name] = [training_step(trainer, [next(stream)], step).loss for step in range(6)]
    assert curves["folora"] == pytest.approx(curves["lora"], abs=1e-6)
    assert curves["lora"][-1] < curves["lora"][0]


def test_auto_proxy_size_covers_the_widest_input_and_a_short_proxy_is_reported(tiny, tmp_path, capsys):
    examples = [{"input_ids": list(range(3, 20)), "labels": list(range(3, 20))} for _ in range(4)]
    widest = tiny.model.config.intermediate_size   # down_proj's input
    auto = folora(proxy={"length": 16, "batch_size": 8}, calibration={"task_examples": 4})
    auto.prepare(load_model(OmegaConf.load(REPO / "conf/model/tiny-random.yaml")).model,
                 method_context(tiny, tmp_path, examples))
    stats = auto.summary()["calibration"]
    assert stats["proxy"]["num_sequences"] == -(-4 * widest // 16) and stats["proxy_tokens"] >= 4 * widest
    assert not stats["proxy_tokens_below_width"]
    conditioning = stats["proxy_conditioning"]
    assert set(conditioning) == set(auto.bases)
    assert all(0 < c["effective_rank"] <= c["dim"] and c["condition_damped"] >= 1 for c in conditioning.values())

    short = folora(proxy={"num_sequences": 2, "length": 8, "batch_size": 2}, calibration={"task_examples": 4})
    short.prepare(load_model(OmegaConf.load(REPO / "conf/model/tiny-random.yaml")).model,
                  method_context(tiny, tmp_path, examples))
    stats = short.summary()["calibration"]
    assert stats["proxy_tokens"] < widest and stats["proxy_tokens_below_width"]
    assert "fewer than the input width" in capsys.readouterr().out
    for group, dim in stats["proxy_tokens_below_width"].items():   # rank ≤ tokens: the rest is held by ε alone
        assert stats["proxy_conditioning"][group]["below_damping"] >= dim - stats["proxy_tokens"]


class _BoostEOS:
    """A logits processor that makes EOS likely, so a tiny random model ends its sequences early."""

    def __init__(self, eos: int):
        self.eos = eos

    def __call__(self, input_ids, scores):
        scores[:, self.eos] += 6.0
        return scores


@pytest.mark.parametrize("start", ["bos", "chat"])
def test_proxy_sequences_stop_at_eos_and_chat_samples_are_conversations(tiny, tmp_path, start, monkeypatch):
    from functools import partial

    from folora.calibration.proxy import chat_turns

    model, tokenizer = tiny.model, tiny.tokenizer
    monkeypatch.setattr(model, "generate", partial(model.generate, logits_processor=[_BoostEOS(tokenizer.eos_token_id)]))
    cfg = proxy_config(num_sequences=12, length=10, batch_size=6, stop_at_eos=True, start=start, min_tokens=60)
    proxy = sample_proxy(model, tokenizer, cfg, model_fingerprint=tiny.fingerprint, cache_dir=tmp_path,
                         device=torch.device("cpu"))
    assert len(proxy.sequences) >= 12 and sum(map(len, proxy.sequences)) >= 60
    opening, reply = chat_turns(tokenizer) if start == "chat" else ([tokenizer.bos_token_id], [])
    ended = 0
    for sequence in proxy.sequences:
        assert sequence[:len(opening)] == opening
        new = sequence[len(opening):]
        eos_at = [i for i, token in enumerate(new) if token == tokenizer.eos_token_id]
        if start == "bos":
            assert len(new) <= 10 and eos_at in ([], [len(new) - 1])   # ends at its first EOS, or at the length
            ended += bool(eos_at)
        elif any(new[i:i + len(reply)] == reply for i in range(len(new))):   # a user turn, then the reply's own
            ended += 1
    assert ended > 0


def test_auto_start_is_the_chat_template_on_a_chat_model_and_bos_otherwise(tiny, tmp_path):
    """`start: auto` samples conversations where the model came with a chat template and starts at BOS where the
    template is the one folora's loader gave it for formatting tasks; the resolved start keys the cache, so `auto`
    reads the samples of the start it resolves to."""
    import copy
    from dataclasses import replace

    from folora.calibration.proxy import resolved_start

    model, tokenizer = tiny.model, tiny.tokenizer
    chat, plain = copy.copy(tokenizer), copy.copy(tokenizer)
    chat.has_own_chat_template, plain.has_own_chat_template = True, False
    assert tokenizer.has_own_chat_template in (True, False) and plain.chat_template   # marked by the loader; tasks
    # still format with its default template
    assert resolved_start(proxy_config(start="auto"), chat).start == "chat"
    assert resolved_start(proxy_config(start="auto"), plain).start == "bos"
    assert resolved_start(proxy_config(start="seeds"), chat).start == "seeds"
    cfg = proxy_config(num_sequences=4, length=6, batch_size=4)
    first, second = (sample_proxy(model, plain, replace(cfg, start=start), model_fingerprint=tiny.fingerprint,
                                  cache_dir=tmp_path, device=torch.device("cpu")) for start in ("bos", "auto"))
    assert second.cached and second.sequences == first.sequences


def test_folora_and_lalora_default_proxies_are_one_cache_entry_on_the_embedded_model():
    """SmolLM2-135M's widest adapted input is 1536: `auto` gives 64 sequences of 96 tokens, LaLoRA's curvature
    samples, so both methods read one proxy sample (one cache key)."""
    from dataclasses import asdict

    from folora.calibration.covariance import InputGroup
    from folora.calibration.proxy import ProxyConfig

    groups = [InputGroup("q", ["q"], 576), InputGroup("down", ["down"], 1536)]
    ours = folora()._proxy_config(groups, seed=3)
    lalora = method_from_conf("lalora")
    theirs = ProxyConfig(**{"seed": 3, **lalora.proxy_options, "num_sequences": lalora.samples})
    assert ours.num_sequences == 64 and asdict(ours) == asdict(theirs)
