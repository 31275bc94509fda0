"""``--baseline REV``: lit_align at an earlier commit as a contender, checked out once and imported in its worker."""

import subprocess

import pytest

from tools.bench import baseline, report, run

REV = "37faeba"  # an earlier commit of this repository whose RLOO/GRPO take the arguments the harness passes


def _git(folder, *args):
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repository(tmp_path):
    """A repository with two commits of a one-line ``lit_align``; returns (folder, first commit, second commit)."""
    repo = tmp_path / "repo"
    (repo / "lit_align").mkdir(parents=True)
    _git(repo, "init", "-q")
    commits = []
    for version in ("old", "new"):
        (repo / "lit_align" / "__init__.py").write_text(f"VERSION = {version!r}\n")
        _git(repo, "add", "lit_align")
        _git(repo, "commit", "-q", "-m", version)
        commits.append(_git(repo, "rev-parse", "HEAD"))
    return repo, *commits


def test_the_checkout_is_made_at_the_commit_then_reused_and_a_moved_one_refused(repository, tmp_path):
    repo, old, new = repository
    under = tmp_path / "worktrees"
    made = baseline.checkout("HEAD~1", repo, under)  # a relative name is resolved to its commit
    assert made.commit == old and made.path == (under / made.short).resolve() and made.contender() == f"lit_align@{made.short}"
    assert (made.path / "lit_align" / "__init__.py").read_text() == "VERSION = 'old'\n"
    assert _git(made.path, "rev-parse", "HEAD") == old
    (made.path / "marker").write_text("kept")  # untracked, outside lit_align/: not a change to the code measured
    again = baseline.checkout(old[:10], repo, under)
    assert again == made and (again.path / "marker").read_text() == "kept"  # the same folder, not made again
    assert len(_git(repo, "worktree", "list").splitlines()) == 2  # the repository and one checkout

    (made.path / "lit_align" / "__init__.py").write_text("VERSION = 'edited'\n")
    with pytest.raises(RuntimeError, match="uncommitted changes in lit_align/: lit_align/__init__.py"):
        baseline.checkout(old, repo, under)
    _git(made.path, "checkout", "-q", "--", "lit_align")
    _git(made.path, "checkout", "-q", "--detach", new)
    with pytest.raises(RuntimeError, match=f"is at {new}, not at {old[:7]}"):
        baseline.checkout(old[:7], repo, under)
    with pytest.raises(ValueError, match="not a commit"):
        baseline.checkout("no-such-rev", repo, under)


def test_a_baseline_contender_follows_lit_align_and_is_chosen_with_it():
    assert run.contenders("grpo", False, baselines=("37faeba",)) == ["lit_align", "lit_align@37faeba", "lit_align+every_group",
                                                                     "trl"]
    assert run.contenders("logprobs", False, baselines=("37faeba",)) == run.CONTENDERS["logprobs"]  # no lit_align
    assert run.chosen("lit_align@37faeba", ["lit_align"]) and not run.chosen("lit_align@37faeba", ["trl"])
    assert run.chosen("trl", None) and not run.chosen("lit_align", ["lit_align@37faeba"])


def _run(contender, repeat, step_s, peak):
    return {"method": "grpo", "contender": contender, "repeat": repeat, "step_s": step_s, "tokens": [10] * len(step_s),
            "process_peak_rss_mib": peak, "train_peak_rss_mib": peak}


def test_lit_align_is_divided_by_its_baseline_step_by_step_beside_the_other_ratios():
    runs = [_run("lit_align", 0, [1.0, 3.0], 900), _run("lit_align@37faeba", 0, [2.0, 4.0], 1000),
            _run("lit_align", 1, [1.0, 3.0], 900), _run("lit_align@37faeba", 1, [1.0, 6.0], 1000),
            _run("trl", 0, [2.0, 6.0], 1200)]
    names = dict.fromkeys(r["contender"] for r in runs)
    table = report.with_ratios({"grpo": {c: report.aggregate([r for r in runs if r["contender"] == c]) for c in names}}, runs)
    mine, base = table["grpo"]["lit_align"], table["grpo"]["lit_align@37faeba"]
    assert mine["time_vs_baseline"] == pytest.approx(0.625)  # median of 1/2, 3/4, 1/1, 3/6
    assert mine["mem_vs_baseline"] == pytest.approx(0.9) and base["time_vs_baseline"] == pytest.approx(1.0)
    assert mine["time_vs_trl"] == pytest.approx(0.5) and "time_vs_baseline" not in table["grpo"]["trl"]
    text = report.markdown(table)
    assert "| time ÷ lit_align@37faeba | peak RSS ÷ lit_align@37faeba |" in text
    assert "| 0.50 | 0.75 | – | – | 0.62 | 0.90 |" in text  # time and RSS ÷ TRL, then ÷ the baseline
    assert "÷ lit_align@" not in report.markdown({"grpo": {"trl": table["grpo"]["trl"]}})  # no baseline, no columns


def test_a_worker_refuses_a_lit_align_that_is_not_the_checkouts(tmp_path):
    assert baseline.provenance()["lit_align_path"] == str(baseline.REPOSITORY)  # this process: this tree
    with pytest.raises(RuntimeError, match="not only from the checkout"):
        baseline.provenance(str(tmp_path))
    with pytest.raises(RuntimeError, match="imported before"):
        baseline.import_first(str(tmp_path))


def test_the_baseline_worker_imports_lit_align_from_the_checkout_and_the_harness_from_this_tree(tmp_path, monkeypatch):
    """A real child of each side: GRPO, 2 prompts x 2 completions of 4 tokens, one step, on the tiny Qwen2."""
    try:
        commit = baseline._git(baseline.REPOSITORY, "rev-parse", "--verify", "--quiet", f"{REV}^{{commit}}")
    except RuntimeError:
        pytest.skip(f"{REV} is not in this clone")
    monkeypatch.setenv("LIT_ALIGN_BENCH_POLICY", "tiny:qwen2-instruct")
    out = tmp_path / "bench"
    args = ["--methods", "grpo", "--contenders", "lit_align", "--baseline", REV, "--rloo-batch", "2", "--rloo-k", "2",
            "--rloo-max-new-tokens", "4", "--steps", "1", "--warmup", "0", "--repeats", "1", "--threads", "1",
            "--out", str(out)]
    result = run.main(args)
    runs = {r["contender"]: r for r in result["runs"]}
    assert list(runs) == ["lit_align", f"lit_align@{REV}"], runs  # one process each, in this order
    checkout = baseline.REPOSITORY / baseline.WORKTREES / REV
    assert all("error" not in r for r in runs.values()), (out / "logs" / f"grpo-lit_align@{REV}-0.log").read_text()
    assert runs[f"lit_align@{REV}"]["lit_align_path"] == str(checkout.resolve())  # read in the child
    assert runs[f"lit_align@{REV}"]["lit_align_commit"] == commit
    assert runs[f"lit_align@{REV}"]["lit_align_uncommitted"] == []
    assert runs["lit_align"]["lit_align_path"] == str(baseline.REPOSITORY)
    assert {r["tools_path"] for r in runs.values()} == {str(baseline.REPOSITORY)}  # the harness: this tree's, in both
    assert result["baseline"] == {"rev": REV, "commit": commit, "path": str(checkout.resolve())}
    row = result["table"]["grpo"]["lit_align"]
    assert row["baseline"] == f"lit_align@{REV}" and row["time_vs_baseline"] > 0 and row["mem_vs_baseline"] > 0
    assert f"time ÷ lit_align@{REV}" in (out / "results.md").read_text()

