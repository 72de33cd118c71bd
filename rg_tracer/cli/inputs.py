"""``rg-tracer init-model`` and ``rg-tracer data``: the inputs of a run, built locally."""

from __future__ import annotations

from pathlib import Path

import click

from rg_tracer.cli.common import user_errors
from rg_tracer.errors import UserError
from rg_tracer.models import quiet_transformers

__all__ = ["init_model_command", "data_command"]


@click.command("init-model")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--arch", type=click.Choice(["gpt2", "llama", "qwen2"]), default="qwen2", show_default=True,
              help="Model family.")
@click.option("--layers", type=int, default=2, show_default=True, help="Transformer blocks.")
@click.option("--hidden", type=int, default=64, show_default=True, help="Hidden size.")
@click.option("--heads", type=int, default=4, show_default=True, help="Attention heads (must divide --hidden).")
@click.option("--max-positions", type=int, default=256, show_default=True, help="Longest prompt + completion.")
@click.option("--alphabet", type=str, default=None, help="Characters the tokenizer covers (default: digits, operators, letters, punctuation).")
@click.option("--number-tokens", type=int, default=0, show_default=True,
              help="Make each integer below N one token (for modular-arithmetic grokking); 0: digits only.")
@click.option("--seed", type=int, default=0, show_default=True, help="Initialisation seed.")
@user_errors
def init_model_command(out_dir: Path, arch, layers, hidden, heads, max_positions, alphabet, number_tokens, seed) -> None:
    """Build a randomly initialised model and character tokenizer in OUT_DIR (no hub needed).

    \b
    Example:
        rg-tracer init-model runs/tiny-qwen2 --arch qwen2 --layers 2 --hidden 64 --heads 4
    """
    from rg_tracer.models import TinyModelSpec, init_model

    quiet_transformers()
    spec = TinyModelSpec(arch=arch, layers=layers, hidden=hidden, heads=heads, max_positions=max_positions, seed=seed)
    if number_tokens < 0:
        raise UserError(f"--number-tokens {number_tokens} must be >= 0")
    n = init_model(out_dir, spec, alphabet, number_tokens)
    click.echo(f"{arch} model with {n:,} parameters written to {out_dir}; train it with --model {out_dir}")


@click.command("data")
@click.argument("task", type=click.Choice(["modular", "addition", "parity", "reasoning-gym"]))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for train.jsonl, test.jsonl and dataset.json.")
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffle (and sampling) seed.")
@click.option("--train-frac", type=float, default=None,
              help="Fraction of items in train [default: 0.5; reasoning-gym: 0.8].")
@click.option("--test-frac", type=float, default=None,
              help="Fraction of items held out in test, instead of --train-frac [reasoning-gym default: 0.2].")
@click.option("--p", "p", type=int, default=97, show_default=True, help="modular: the modulus (prime for '/').")
@click.option("--op", type=click.Choice(["+", "-", "*", "/"]), default="+", show_default=True, help="modular: operation.")
@click.option("--digits", type=int, default=3, show_default=True, help="addition: digits per operand.")
@click.option("--count", "--size", "count", type=int, default=None,
              help="addition/parity/reasoning-gym: items to generate (default 2000 / 1000 / 1000).")
@click.option("--n", "n", type=int, default=10, show_default=True, help="parity: bits per string.")
@click.option("--k", "k", type=int, default=3, show_default=True, help="parity: secret bits whose parity is the answer.")
@click.option("--task", "rg_task", default=None, help="reasoning-gym: the task, e.g. basic_arithmetic, leg_counting.")
@click.option("--train-config", default=None,
              help="reasoning-gym: JSON of task options for train, e.g. '{\"min_digits\":1,\"max_digits\":2}'.")
@click.option("--test-config", default=None,
              help="reasoning-gym: JSON of task options for test [default: --train-config] (difficulty split).")
@user_errors
def data_command(task, out_dir, seed, train_frac, test_frac, p, op, digits, count, n, k, rg_task, train_config,
                 test_config) -> None:
    """Generate a TASK dataset with a clean held-out split (no test prompt in train).

    \b
    Tasks:
        modular        every pair a op b mod p (Power et al. 2022), split by --train-frac
        addition       --count distinct pairs of --digits-digit numbers
        parity         sparse parity: --count strings of --n bits, answer = parity of --k secret bits
        reasoning-gym  --size items of the reasoning-gym task --task, each answer checked by the
                       task's own verifier (score it with --scorer reasoning-gym); --train-config and
                       --test-config pass task options to each split, e.g. easy train, hard test
                       (needs pip install 'rg-tracer[reasoning]')

    \b
    Example:
        rg-tracer data modular --p 7 --op + --train-frac 0.5 --out datasets/mod7_add
        rg-tracer train --model runs/tiny --dataset datasets/mod7_add/train.jsonl
        rg-tracer data reasoning-gym --task basic_arithmetic --size 1000 --out datasets/rg_arith \\
            --train-config '{"min_digits":1,"max_digits":2}' --test-config '{"min_digits":3,"max_digits":3}'
    """
    from rg_tracer.tasks import make_split, write_split

    if train_frac is not None and test_frac is not None:
        raise UserError("pass --train-frac or --test-frac, not both")
    for flag, frac in (("--train-frac", train_frac), ("--test-frac", test_frac)):
        if frac is not None and not 0 < frac < 1:
            raise UserError(f"{flag} {frac} must be in (0, 1), e.g. {0.5 if flag == '--train-frac' else 0.2}")
    if task == "reasoning-gym":
        from rg_tracer.tasks.reasoning_gym import make_rg_split, parse_config

        if not rg_task:
            raise UserError("reasoning-gym needs --task NAME, e.g. --task basic_arithmetic")
        split = make_rg_split(rg_task, size=1000 if count is None else count, seed=seed,
                              test_frac=test_frac or (0.2 if train_frac is None else round(1 - train_frac, 12)),
                              train_config=parse_config(train_config, "--train-config"),
                              test_config=None if test_config is None else parse_config(test_config, "--test-config"))
        info = write_split(split, out_dir, verified_by="reasoning_gym score_answer")
        click.echo(f"reasoning-gym {rg_task}: {info['train']} train / {info['test']} test items in {out_dir} "
                   "(disjoint by prompt hash, answers verified by the task's score_answer); "
                   "train with --scorer reasoning-gym")
        return
    used = [flag for flag, value in (("--task", rg_task), ("--train-config", train_config),
                                     ("--test-config", test_config)) if value is not None]
    if used:
        raise UserError(f"{used[0]} is for the reasoning-gym task only")
    params = {"modular": {"p": p, "op": op},
              "addition": {"digits": digits, "count": 2000 if count is None else count},
              "parity": {"n": n, "k": k, "count": 1000 if count is None else count}}[task]
    train_frac = train_frac or (0.5 if test_frac is None else round(1 - test_frac, 12))
    info = write_split(make_split(task, train_frac=train_frac, seed=seed, **params), out_dir)
    click.echo(f"{task}: {info['train']} train / {info['test']} test items in {out_dir} "
               "(disjoint by prompt hash, answers verified)")
