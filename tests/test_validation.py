"""The whole config surface is checked before anything slow: a table of bad values, one row per key, each giving one
message that names the key and says what is valid; every shipped combination of configs passes the same checks."""

import pytest
from omegaconf import OmegaConf

from folora.errors import FoloraError
from folora.experiment.validation import RULES, validate_config
from folora.methods.options import check_method_options, method_options
from tests.conftest import CONF, METHODS, TINY, composed, method_from_conf, read_results, run_folora


def refused(*overrides: str) -> str:
    with pytest.raises(FoloraError) as caught:
        validate_config(composed(*overrides))
    return str(caught.value)


# (overrides, phrases the message must contain): train, eval, seed, device, experiment, model, task, logger
BAD_VALUES = [
    (["train.steps=2.5"], ["train.steps=2.5", "a positive integer", "e.g. train.steps="]),
    (["train.steps=abc"], ["train.steps='abc'", "a positive integer"]),
    (["train.steps=0"], ["train.steps=0", "a positive integer"]),
    (["train.batch_size=-1"], ["train.batch_size=-1", "positive"]),
    (["train.grad_accum=0"], ["train.grad_accum=0", "positive"]),
    (["train.lr=0"], ["train.lr=0", "positive learning rate"]),
    (["train.lr=fast"], ["train.lr='fast'", "positive learning rate"]),
    (["train.betas=[0.9]"], ["train.betas=[0.9]", "two numbers in [0, 1)"]),
    (["train.betas=[0.9,1.5]"], ["train.betas=[0.9, 1.5]", "two numbers in [0, 1)"]),
    (["train.weight_decay=-0.1"], ["train.weight_decay=-0.1", ">= 0"]),
    (["train.sharding=zero3"], ["train.sharding='zero3'", "ddp or fsdp"]),
    (["train.warmup_ratio=1"], ["train.warmup_ratio=1", "[0, 1)"]),
    (["train.max_grad_norm=0"], ["train.max_grad_norm=0", "positive"]),
    (["train.log_every=0"], ["train.log_every=0", "positive"]),
    (["train.val_examples=-2"], ["train.val_examples=-2", ">= 0"]),
    (["seed=-1"], ["seed=-1", "non-negative integer"]),
    (["seed=true"], ["seed=True", "non-negative integer"]),
    (["device=gpu"], ["device='gpu'", "auto, cpu, cuda or cuda:N"]),
    (["skip_completed=maybe"], ["skip_completed='maybe'", "true or false"]),
    (["experiment="], ["experiment=''", "non-empty"]),
    (["eval.limit=0"], ["eval.limit=0", "positive integer or null"]),
    (["eval.limit=many"], ["eval.limit='many'", "positive integer or null"]),
    (["eval.batch_size=0"], ["eval.batch_size=0", "positive"]),
    (["eval.max_length=0"], ["eval.max_length=0", "positive"]),
    (["eval.bootstrap_iters=-1"], ["eval.bootstrap_iters=-1", ">= 0"]),
    (["eval.kl.max_tokens=0"], ["eval.kl.max_tokens=0", "positive"]),
    (["eval.include_defaults=3"], ["eval.include_defaults=3", "true or false"]),
    (["eval.items.capitals.task=null"], ["eval.items.capitals is empty or incomplete", "a task and a metric"]),
    (["~eval.items.capitals.metric"], ["eval.items.capitals is empty or incomplete"]),
    (["eval.items.capitals=null"], ["eval.items.capitals is empty or incomplete"]),
    (["eval.items.math_strict.limit=0"], ["eval.items.math_strict.limit=0", "positive"]),
    (["+eval.items.capitals.weight=2"], ["eval.items.capitals.weight", "not an option of an eval item", "Valid options"]),
    (["eval.items.math_strict.chat=yes"], ["eval.items.math_strict.chat='yes'", "true or false"]),
    (["~eval.items"], ["has no items"]),
    (["eval=standard", "task=math", "eval.aggregates.forgetting_average=[hellaswag,nope]"],
     ["eval.aggregates.forgetting_average names ['nope']"]),
    (["task.eval.target=[no_such_item]"], ["names eval items ['no_such_item']", "does not have"]),
    (["eval.every=-1"], ["eval.every=-1", "steps between trajectory points"]),
    (["eval.items.capitals.kind=trivia"], ["eval.items.capitals.kind='trivia'", "knowledge"]),
    (["+eval.items.capitals.diagnostic=maybe"], ["eval.items.capitals.diagnostic='maybe'", "true or false"]),
    (["eval.forgetting=[prose_bpb,nope]"], ["eval.forgetting names ['nope']"]),
    (["eval.forgetting=[capitals]"], ["eval.forgetting lists capitals", "higher is better"]),
    (["task.eval.target=[]"], ["task.eval.target=[]", "non-empty list"]),
    (["task.sizes.train=0"], ["task.sizes.train=0", "positive"]),
    (["task.max_length=-5"], ["task.max_length=-5", "positive"]),
    (["task.seed=x"], ["task.seed='x'", "non-negative integer"]),
    (["task.source=web"], ["task.source='web'", "embedded, hub"]),
    (["model.source=ftp"], ["model.source='ftp'", "gguf_package"]),
    (["model=tiny-random", "model.vocab_size=0"], ["model.vocab_size=0", "positive"]),
    (["model=tiny-random", "model.architecture.hidden_size=-64"], ["model.architecture.hidden_size=-64"]),
    (["model=qwen2.5-0.5b-instruct", "model.path=null"], ["needs model.path"]),
    (["logger.mode=cloud"], ["logger.mode='cloud'", "offline, online or disabled"]),
]


@pytest.mark.parametrize(("overrides", "phrases"), BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_a_bad_value_gives_one_message_naming_it(overrides, phrases):
    message = refused(*overrides)
    for phrase in phrases:
        assert phrase in message, message


# Each method's own options: unknown keys, wrong types, out-of-range values, nested blocks.
BAD_METHOD_OPTIONS = [
    ("lora", ["+method.rnak=8"], ["method.rnak: not an option of method 'lora'", "Valid options:", "rank"]),
    ("lora", ["method.rank=8.5"], ["method.rank=8.5 is a float", "an integer"]),
    ("lora", ["method.alpha=big"], ["method.alpha='big' is a str", "a number"]),
    ("lora", ["method.dropout=1.5"], ["method.dropout=1.5 must be in [0, 1)"]),
    ("lora", ["method.alpha=0"], ["method.alpha=0 must be positive"]),
    ("pissa", ["method.offset=[1]"], ["method.offset=[1] is a list", "a string or an integer or a number"]),
    ("milora", ["+method.ofset=3"], ["method.ofset: not an option of method 'milora'", "offset"]),
    ("intermediate_pc", ["method.offset=sideways"], ["method.offset='sideways' must be top, middle, bottom"]),
    ("intermediate_pc", ["method.offset=1.5"], ["method.offset=1.5: a fractional offset must be in [0, 1]"]),
    ("folora", ["method.kappa=-1"], ["method.kappa=-1", "must be >= 0"]),
    ("folora", ["method.kappa=high"], ["method.kappa='high' is a str", "a number"]),
    ("folora", ["method.gate=cosine"], ["method.gate='cosine'", "rational"]),
    ("folora", ["method.gate_a=1"], ["method.gate_a=1 is a int", "true or false"]),
    ("folora", ["method.top_k=0"], ["method.top_k=0", "positive"]),
    ("folora", ["method.tau=0"], ["method.tau=0 must be positive"]),
    ("folora", ["method.damping=0"], ["method.damping=0 must be positive"]),
    ("folora", ["method.refresh_ema=1"], ["refresh_ema in [0, 1)"]),
    ("folora", ["method.a_init=orthogonal"], ["method.a_init='orthogonal' must be kaiming or spectral"]),
    ("folora", ["+method.proxy.num_sequencs=8"], ["method.proxy.num_sequencs: not an option of method.proxy",
                                                  "num_sequences"]),
    ("folora", ["method.proxy.length=ten"], ["method.proxy.length='ten' is a str", "an integer"]),
    ("folora", ["method.proxy.num_sequences=many"], ["method.proxy.num_sequences='many' must be auto"]),
    ("folora", ["method.proxy.num_sequences=0"], ["method.proxy.num_sequences=0 must be auto", "positive"]),
    ("folora", ["method.proxy_tokens_per_width=0"], ["method.proxy_tokens_per_width=0 must be positive"]),
    ("folora", ["method.coordinates=diagonal"], ["method.coordinates='diagonal' is not one of", "spectral, weight"]),
    ("folora", ["method.proxy.stop_at_eos=maybe"], ["method.proxy.stop_at_eos='maybe' is a str", "true or false"]),
    ("folora", ["method.calibration.task_examples=0"], ["method.calibration.task_examples=0", "positive"]),
    ("folora", ["+method.calibration.tokens=5"], ["method.calibration.tokens: not an option of method.calibration"]),
    ("lalora", ["method.lam=-1"], ["method.lam=-1 must be >= 0"]),
    ("lalora", ["method.curvature=full"], ["method.curvature='full' is not one of"]),
    ("lalora", ["method.curvature_samples=0"], ["method.curvature_samples=0 must be positive"]),
    ("lalora", ["method.data=web"], ["method.data='web' must be proxy or corpus"]),
    ("lalora", ["+method.proxy.num_sequences=8"], ["method.proxy.num_sequences: not an option of method.proxy"]),
    ("corda", ["method.corda_method=both"], ["method.corda_method='both' must be kpm", "ipm"]),
    ("corda", ["method.proxy.num_sequences=0"], ["method.proxy.num_sequences=0 must be auto"]),
    ("peft", ["method.peft_type=PREFIX_TUNING"], ["PREFIX_TUNING is a prompt-learning type", "LORA"]),
    ("peft", ["method.peft_type=NOPE"], ["method.peft_type='NOPE' is not a PEFT adapter type", "LORA, MISS, OFT"]),
    ("dora", ["+method.config.use_dorra=true"], ["method.config.use_dorra: not an option of PEFT's LoraConfig",
                                                 "use_dora"]),
    ("peft", ["method.peft_type=ADALORA"], ["method.peft_type=ADALORA is not supported", "rank allocation"]),
    ("oft", ["method.config.r=4"], ["PEFT refused method.config for OFTConfig", "oft_block_size"]),
    ("dora", ["+method.config.init_lora_weights=pissa"], ["method.config.init_lora_weights='pissa' is not supported",
                                                          "use method=pissa"]),
    ("full", ["method.freeze_embeddings=sometimes"], ["method.freeze_embeddings='sometimes' is a str",
                                                      "true or false"]),
]


@pytest.mark.parametrize(("method", "overrides", "phrases"), BAD_METHOD_OPTIONS,
                         ids=[f"{m}:{' '.join(o)}" for m, o, _ in BAD_METHOD_OPTIONS])
def test_a_bad_method_option_gives_one_message_naming_it(method, overrides, phrases):
    from folora.methods.build import build_method

    cfg = composed(f"method={method}", *overrides)
    with pytest.raises(FoloraError) as caught:
        validate_config(cfg)
        build_method(cfg.method)   # ranges are checked by the method's own constructor
    for phrase in phrases:
        assert phrase in str(caught.value), str(caught.value)


def test_every_method_is_covered_by_the_option_table():
    assert {m for m, _, _ in BAD_METHOD_OPTIONS} == set(METHODS)


def test_every_rule_names_a_key_some_shipped_config_has():
    keys = set()
    for model in ("smollm2-135m", "tiny-random", "qwen2.5-0.5b-instruct"):
        cfg = OmegaConf.to_container(composed(f"model={model}"), resolve=True)
        stack = [("", cfg)]
        while stack:
            prefix, node = stack.pop()
            for key, value in node.items():
                keys.add(prefix + key)
                if isinstance(value, dict):
                    stack.append((f"{prefix}{key}.", value))
    assert {rule.key for rule in RULES} <= keys


def test_a_misspelt_key_in_a_method_yaml_is_refused():
    cfg = OmegaConf.create({**OmegaConf.to_container(composed("method=folora").method), "rnak": 8})
    with pytest.raises(FoloraError, match=r"method.rnak: not an option of method 'folora' \(folora.fo_lora.FoLoRA\)"):
        check_method_options(cfg)


def test_a_method_sets_its_own_default_learning_rate_and_the_command_line_still_wins():
    # LoRA, LaLoRA and FoLoRA share the 2e-3 of conf/config.yaml; the SVD slice's YAML sets its own (train.lr reads it)
    assert composed("method=lora").train.lr == 2.0e-3
    assert "lr" not in composed("method=lora").method
    for name in ("pissa", "milora", "intermediate_pc"):
        cfg = composed(f"method={name}")
        assert cfg.train.lr == cfg.method.lr
        assert composed(f"method={name}", "method.lr=1e-5").train.lr == 1e-5
        assert composed(f"method={name}", "train.lr=3e-3").train.lr == 3e-3


@pytest.mark.parametrize("value", [-1e-3, 0.0])
def test_a_method_learning_rate_that_is_not_positive_is_refused(value):
    with pytest.raises(FoloraError, match=r"method.lr=.* must be a positive learning rate"):
        method_from_conf("pissa", lr=value)


def test_method_options_follow_the_class_hierarchy():
    from baselines.svd_slice import SVDSlice
    from folora.fo_lora import FoLoRA

    assert {"rank", "alpha", "dropout", "target_modules", "offset", "name", "knob", "lr"} == set(method_options(SVDSlice))
    assert {"kappa", "proxy", "calibration", "rank"} <= set(method_options(FoLoRA))


def shipped_combinations():
    """Each task on the suite it is meant for (embedded tasks on `embedded`, hub tasks on `standard`, whose items
    are lm-eval's own) with every method; then every model and every logger with the defaults."""
    for task in sorted(p.stem for p in (CONF / "task").glob("*.yaml")):
        suite = "embedded" if composed(f"task={task}").task.source == "embedded" else "standard"
        for method in METHODS:
            yield f"task={task}", f"eval={suite}", f"method={method}"
    for group in ("model", "logger"):
        for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
            yield (f"{group}={option}",)


def test_every_shipped_combination_passes_the_checks():
    for overrides in shipped_combinations():
        validate_config(composed(*overrides))


@pytest.mark.integration
@pytest.mark.parametrize(("overrides", "phrase"), [
    (["train.steps=1.5"], "train.steps=1.5: must be a positive integer"),
    (["eval.limit=0"], "eval.limit=0: must be a positive integer or null"),
    (["seed=-3"], "seed=-3: must be a non-negative integer"),
    (["+method.rnak=8"], "method.rnak: not an option of method 'folora'"),
])
def test_the_entry_point_stops_before_loading_anything(tmp_path, overrides, phrase):
    """Through `python -m folora.run`: one message, exit 2, results.json failed, and no phase ever started."""
    process = run_folora(tmp_path / "run", *TINY, *overrides)
    assert process.returncode == 2, process.stderr[-2000:]
    assert phrase in process.stderr and "Traceback" not in process.stderr
    results = read_results(tmp_path / "run")
    assert results["status"] == "failed" and phrase in results["error"]["message"]
    assert "[folora] load model" not in process.stdout
