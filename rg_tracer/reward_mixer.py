"""Load reward-mixer weights from YAML or JSON into upstream's ``RewardMixerConfig``.

Upstream defaults to ``weights={}`` with ``default_weight=0``: every scalar reward is
zero and nothing learns, silently. So weights are required here, and training refuses
to start when none of them names a reward the scorer produces (:func:`check_overlap`).

File format (``configs/reward_mixer.yaml``)::

    weights: {correctness: 1.0, reasoning_quality: 0.5, format_penalty: -0.25}
    normalize: false      # z-score each axis over the batch before mixing
    clip_min: null
    clip_max: null

A bare mapping of axis -> weight is accepted too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from gepa_dapo_grn import RewardMixerConfig

from rg_tracer.errors import UserError

__all__ = ["load_reward_mixer", "check_overlap", "resolve_mixer_path", "DEFAULT_MIXER", "PACKAGED_MIXER"]

_OPTIONS = {"normalize", "clip_min", "clip_max"}


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where} must be a finite number, got {value!r}")
    return float(value)


#: the ``--reward-mixer`` default: the repository's file, which links to the copy shipped in the package
DEFAULT_MIXER = "configs/reward_mixer.yaml"
PACKAGED_MIXER = Path(__file__).resolve().parent / "defaults" / "reward_mixer.yaml"


def resolve_mixer_path(path: str | Path) -> Path:
    """``path``; the default mixer shipped in the package when ``path`` is the default and the
    working directory is not a checkout (``rg-tracer train`` run from anywhere)."""
    if str(path) == DEFAULT_MIXER and not Path(path).is_file():
        return PACKAGED_MIXER
    return Path(path)


def load_reward_mixer(path: str | Path) -> RewardMixerConfig:
    from rg_tracer.options import load_option_yaml

    path = Path(path)
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read reward mixer {path}: {exc}") from exc
        except (json.JSONDecodeError, RecursionError) as exc:
            raise UserError(f"{path}: not valid JSON: {exc}".splitlines()[0]) from exc
    else:  # no aliases, bounded size: a hostile file cannot expand into gigabytes
        data = load_option_yaml(str(path), f"reward mixer {path}: not valid YAML")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of reward axis -> weight, got {type(data).__name__}")
    if "weights" in data:
        weights, options = data["weights"], {k: v for k, v in data.items() if k != "weights"}
    else:
        weights, options = data, {}
    if not isinstance(weights, dict) or not weights:
        raise UserError(f"{path}: 'weights' must be a non-empty mapping of reward axis -> number")
    unknown = set(options) - _OPTIONS
    if unknown:
        raise UserError(f"{path}: unknown key(s) {sorted(unknown)}; allowed beside 'weights': {sorted(_OPTIONS)}")
    parsed = {str(k): _number(v, f"{path}: weight {k!r}") for k, v in weights.items()}
    normalize = options.get("normalize", False)
    if not isinstance(normalize, bool):
        raise UserError(f"{path}: 'normalize' must be true or false, got {normalize!r}")
    clips = {
        k: None if options.get(k) is None else _number(options[k], f"{path}: {k}")
        for k in ("clip_min", "clip_max")
    }
    return RewardMixerConfig(weights=parsed, normalize=normalize, default_weight=0.0, **clips)


def check_overlap(mixer: RewardMixerConfig, reward_keys: set[str], source: str) -> None:
    """Refuse to train when no non-zero weight names a reward axis the scorer produces."""
    live = {k for k, w in mixer.weights.items() if w != 0.0 and k in reward_keys}
    if not live:
        raise UserError(
            f"no reward-mixer weight matches a reward the scorer produces: weights name "
            f"{sorted(mixer.weights)}, rewards are {sorted(reward_keys)}; fix {source} "
            "(training would see a zero reward for every sample)"
        )
