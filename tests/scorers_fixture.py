"""Deliberately broken scorers, loaded by tests through ``--scorer tests.scorers_fixture:...``."""


class NaNScorer:
    def score(self, prompts, completions, references):
        return [{"correctness": float("nan")} for _ in completions]


class ShortScorer:
    def score(self, prompts, completions):
        return [{"correctness": 1.0}]


class AccuracyScorer:
    """Produces a reward the shipped mixer does not weight."""

    def score(self, prompts, completions):
        return [{"accuracy": 1.0} for _ in completions]
