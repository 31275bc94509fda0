"""The verifier evaluation's per-problem figures and intervals, on a tiny model with a scripted verifier."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from lit_align.cli import main
from lit_align.evaluation.stats import wilson_interval
from lit_align.evaluation.verifier import VerifierEval, compare_results, describe, evaluate_with_verifier
from lit_align.methods import RewardModel
from lit_align.policy import PolicyBase
from lit_align.rewards.base import Reward
from lit_align.sampling.engines import HFGenerate
from lit_align.sampling.generate import SamplingParams

ROOT = Path(__file__).resolve().parents[2]


class Scripted(Reward):
    """Hands out the given scores in order, whatever the completions say."""

    def __init__(self, scores):
        self.scores = list(scores)

    def __call__(self, prompts, completions, records):
        out, self.scores = self.scores[: len(completions)], self.scores[len(completions):]
        return torch.tensor(out)


def _records(count):
    return [("test", {"prompt": f"Question {i}?"}) for i in range(count)]


def test_one_completion_per_problem_gives_wilson_accuracy_and_problem_order(tiny_lm, tokenizer):
    scores = [1.0, 0.1, 0.0, 1.0, 0.1]
    params = SamplingParams(max_new_tokens=3, temperature=0.0)
    result = evaluate_with_verifier(tiny_lm, tokenizer, _records(5), Scripted(scores), params, batch_size=2)
    assert result["problem_scores"] == pytest.approx(scores)  # record order kept across batches
    assert result["problem_correct"] == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert result["score"] == pytest.approx(2.2 / 5) and result["accuracy"] == pytest.approx(2 / 5)
    assert result["accuracy_interval"] == pytest.approx(list(wilson_interval(2, 5)))
    low, high = result["score_interval"]
    assert 0.0 <= low < 2.2 / 5 < high <= 1.0
    score, accuracy = describe(result)
    assert accuracy.method == "Wilson" and score.method == "bootstrap" and score.n == 5


def test_several_completions_average_within_each_problem(tiny_lm, tokenizer):
    # two problems, three completions each: problem 0 scores (1, 1, 0.1), problem 1 (0, 0.1, 1)
    params = SamplingParams(max_new_tokens=3, temperature=1.0, n=3)
    result = evaluate_with_verifier(tiny_lm, tokenizer, _records(2), Scripted([1, 1, 0.1, 0, 0.1, 1]), params)
    assert result["problem_scores"] == pytest.approx([2.1 / 3, 1.1 / 3])
    assert result["problem_correct"] == pytest.approx([2 / 3, 1 / 3])
    assert result["num_problems"] == 2 and result["num_completions"] == 6
    assert describe(result)[1].method == "bootstrap"  # shares, not 0/1 outcomes


def test_before_and_after_are_compared_problem_by_problem():
    before = {"num_completions": 4, "num_problems": 4, "problem_scores": [0.0, 0.1, 0.0, 1.0],
              "problem_correct": [0.0, 0.0, 0.0, 1.0]}
    after = {"num_completions": 4, "num_problems": 4, "problem_scores": [1.0, 1.0, 0.1, 0.1],
             "problem_correct": [1.0, 1.0, 0.0, 0.0]}
    score, accuracy = compare_results(before, after)
    assert score.diff == pytest.approx((2.2 - 1.1) / 4) and score.test == "paired bootstrap"
    assert accuracy.test == "McNemar exact" and (accuracy.gained, accuracy.lost) == (2, 1)
    assert accuracy.p_value == pytest.approx(1.0)  # 2 against 1 discordant: two-sided exact p = 1
    with pytest.raises(ValueError, match="different numbers of problems"):
        compare_results(before, {**after, "num_problems": 3})


class _Source:
    def __init__(self, count):
        self.count = count

    def records(self):
        return iter(_records(self.count))


class Recording(HFGenerate):
    """Hugging Face generate that keeps which model it sampled, with which settings (``calls``)."""

    def __init__(self):
        self.calls = []

    def sample(self, model, tokenizer, input_ids, attention_mask, params, seed=0):
        self.calls.append((model, params))
        return super().sample(model, tokenizer, input_ids, attention_mask, params, seed)


@pytest.mark.parametrize("before", [True, False])
def test_before_false_measures_only_the_end_of_fit(tmp_path, before):
    verifier = Scripted([0.0, 0.1, 1.0, 1.0])  # before (when measured): 0.0, 0.1; after: 1.0, 1.0
    greedy = SamplingParams(max_new_tokens=3, temperature=0.0)
    callback = VerifierEval(_Source(2), verifier, num_prompts=2, generation=greedy, output=str(tmp_path / "eval.json"),
                            before=before)
    trainer = SimpleNamespace(is_global_zero=True, loggers=[], global_step=0)
    module = PolicyBase(model="tiny:causal-lm", rollout=Recording())
    module.configure_model()
    callback.setup(trainer, module, "fit")
    callback.on_fit_start(trainer, module)
    callback.on_fit_end(trainer, module)
    written = json.loads((tmp_path / "eval.json").read_text())
    assert set(written) == ({"before", "after"} if before else {"after"})
    # without the start measured, the after-figure takes the first scores the verifier hands out
    assert written["after"]["problem_scores"] == pytest.approx([1.0, 1.0] if before else [0.0, 0.1])
    assert ("against_before" in written["after"]) is before
    # every completion came from the module's own engine, with the callback's settings
    assert module.rollout.calls == [(module.policy, greedy)] * (2 if before else 1)


def test_a_module_without_a_policy_is_refused_by_name_before_fit():
    callback = VerifierEval(_Source(2), Scripted([]))
    with pytest.raises(TypeError, match="PolicyBase.*not RewardModel"):
        callback.setup(SimpleNamespace(), RewardModel(model="tiny:classifier"), "fit")


def test_settings_a_config_leaves_out_keep_the_greedy_default(tmp_path, capsys):
    # a config naming only max_new_tokens must not turn the evaluation into sampling at temperature 1
    config = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())
    callback = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("VerifierEval"))
    callback["init_args"]["generation"] = {"max_new_tokens": 12}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(path), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    callback = next(c for c in printed["trainer"]["callbacks"] if c["class_path"].endswith("VerifierEval"))
    assert callback["init_args"]["generation"] == {"max_new_tokens": 12, "temperature": 0.0, "top_p": 1.0, "n": 1}


def test_every_n_steps_adds_a_held_out_curve_once_per_optimiser_step(tmp_path):
    verifier = Scripted([0.0, 0.1, 0.2, 0.3, 1.0, 1.0])  # step 2, step 4, then the end of fit
    callback = VerifierEval(_Source(2), verifier, num_prompts=2, generation=SamplingParams(max_new_tokens=3, temperature=0.0),
                            output=str(tmp_path / "eval.json"), before=False, every_n_steps=2)
    logged = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((step, metrics)))
    trainer = SimpleNamespace(is_global_zero=True, loggers=[logger], global_step=0)
    module = PolicyBase(model="tiny:causal-lm")
    module.configure_model()
    for step in [1, 2, 2, 3, 4]:  # step 2 twice: a batch that only drew leaves global_step where it was
        trainer.global_step = step
        callback.on_train_batch_end(trainer, module, None, None, 0)
    callback.on_fit_end(trainer, module)
    written = json.loads((tmp_path / "eval.json").read_text())
    assert list(written) == ["step_2", "step_4", "after"]
    assert written["step_4"]["problem_scores"] == pytest.approx([0.2, 0.3])
    assert [(s, m["eval/curve_score"]) for s, m in logged if "eval/curve_score" in m] == [(2, pytest.approx(0.05)),
                                                                                          (4, pytest.approx(0.25))]
    with pytest.raises(ValueError, match="every_n_steps"):
        VerifierEval(_Source(2), verifier, every_n_steps=-1)
