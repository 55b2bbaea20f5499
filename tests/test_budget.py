"""The budget's choice of the architecture that gets the next free slot (no Ray: a simulated 2-slot search)."""

from __future__ import annotations

from collections.abc import Callable

from tune.search.budget import Budget, Usage

Rule = Callable[[dict[str, Usage]], "str | None"]


def simulate(pick: Rule, lengths: dict[str, list[float]], slots: int = 2) -> tuple[float, list[str]]:
    """Run trials of the given lengths (per architecture, in the order handed out) on `slots` slots, each
    free slot going to pick(usage): (the time the last trial ends, the architectures in the order handed)."""
    now, running, order = 0.0, [], []
    done: dict[str, list[float]] = {a: [] for a in lengths}
    while True:
        while len(running) < slots:
            usage = {a: Usage(handed=sum(o == a for o in order), running=sum(r[1] == a for r in running),
                              finished=len(done[a]), mean_s=sum(done[a]) / len(done[a]) if done[a] else 0.0)
                     for a in lengths}
            arch = pick(usage)
            if arch is None:
                break
            running.append((now + lengths[arch][usage[arch].handed], arch, now))
            order.append(arch)
        if not running:
            return now, order
        running.sort()
        now, arch, began = running.pop(0)
        done[arch].append(now - began)


def test_a_trial_count_starts_the_longest_work_first_so_no_long_trial_runs_alone_at_the_end() -> None:
    budget = Budget(("cnn", "lite"), trials=6)
    lengths = {"cnn": [10.0] * 6, "lite": [60.0] * 6}
    end, order = simulate(budget.next_arch, lengths)
    assert order.count("cnn") == order.count("lite") == 6  # exactly N each
    assert order[:2] == ["cnn", "lite"]  # before each has finished a trial: they interleave
    assert order[-1] == "cnn"  # the short ones come last
    assert end == sum(sum(v) for v in lengths.values()) / 2  # both slots busy to the end: (6x10 + 6x60) / 2

    def fewest_handed(usage: dict[str, Usage]) -> str | None:  # the rule before: strictly interleaved
        open_ = [a for a in ("cnn", "lite") if usage[a].handed < 6]
        return min(open_, key=lambda a: usage[a].handed) if open_ else None

    before, _ = simulate(fewest_handed, lengths)
    assert before > end  # the old rule ends on a 60 s trial with the other slot idle (here for 10 s)


def test_a_trial_count_never_hands_out_more_than_n_and_ends() -> None:
    budget = Budget(("a", "b", "c"), trials=2)
    end, order = simulate(budget.next_arch, {"a": [5.0, 1.0], "b": [1.0, 1.0], "c": [3.0, 9.0]}, slots=3)
    assert sorted(order) == ["a", "a", "b", "b", "c", "c"]
    assert order[:3] == ["a", "b", "c"]


def test_a_pickled_budget_keeps_the_drivers_clock_wherever_the_run_moved() -> None:
    """Ray restores the searcher's and the scheduler's budgets from pickles made where the run once was; the
    deadline is the one the driver starts now (the budget less what was spent), not one a path names."""
    import pickle
    import time

    restored = pickle.loads(pickle.dumps(Budget(("a", "b"), seconds=600.0)))
    Budget(("a", "b"), seconds=600.0).start(slots=2, spent=590.0)  # the driver, resuming with 10 s left
    assert time.time() + 5 < restored.deadline < time.time() + 11 and restored.share_s() == 600.0
    Budget(("a", "b"), seconds=600.0).start(slots=2, spent=600.0)
    assert restored.expired() and restored.next_arch({"a": Usage(), "b": Usage()}) is None
    Budget(("a",)).start(slots=1)  # the next experiment of this process: no time limit
    assert not restored.expired()


class _Child:
    """An architecture's study as ArchSearcher sees it: results pass through, nothing to sample."""

    _ot_trials: dict = {}
    _completed_trials: set = set()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


class _Plan:
    def open(self, url: str | None = None) -> _Child:
        return _Child()


def test_a_trial_is_charged_the_wall_time_it_held_its_slot_not_only_its_reported_time(monkeypatch, tmp_path) -> None:
    """Ray's time_total_s leaves out each report's checkpoint; the searcher charges the driver's wall time since
    the trial's training began, and a trial restored by --resume goes on from what it was charged."""
    import tune.search.searcher as searcher

    now = [1000.0]
    monkeypatch.setattr(searcher.time, "time", lambda: now[0])
    s = searcher.ArchSearcher({"a": _Plan()}, Budget(archs=("a",), seconds=60), metric="m", mode="max")  # type: ignore[dict-item]
    s.owner["t1"] = "a"
    s.on_trial_result("t1", {"time_total_s": 2.0})  # its training began 2 s ago
    now[0] += 5.0
    s.on_trial_result("t1", {"time_total_s": 5.5})  # 1.5 s of those 5 went to checkpoints
    assert s.seconds["t1"] == 7.0 and s.usage()["a"].used_s == 7.0
    s.save(str(tmp_path / "state.pkl"))
    now[0] += 600.0  # the stop, and the time until --resume
    s.restore(str(tmp_path / "state.pkl"))
    s.on_trial_result("t1", {"time_total_s": 6.0})  # restored from its checkpoint: charged on from 7 s, not 607
    now[0] += 1.0
    s.on_trial_complete("t1", {"time_total_s": 6.5})
    assert s.seconds["t1"] == 8.0 and s.usage()["a"].finished == 1
