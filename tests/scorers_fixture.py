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


class EvenAnswersVary:
    """Prompts with an even answer get rewards 0,1,0,1,... (variance); odd ones a constant."""

    def score(self, prompts, completions, references):
        return [{"r": float(i % 2) if int(ref["answer"]) % 2 == 0 else 0.5}
                for i, ref in enumerate(references)]
