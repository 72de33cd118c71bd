"""A character-level Hugging Face tokenizer for models built without a hub.

Tiny randomly initialised models learn faster over a small vocabulary, and a
character tokenizer needs no training data: its vocabulary is the datasets'
alphabet. It is a real ``tokenizers`` WordLevel model wrapped in
``PreTrainedTokenizerFast``, so ``save_pretrained``/``AutoTokenizer`` round-trip it.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["SPECIAL_TOKENS", "DEFAULT_ALPHABET", "build_char_tokenizer"]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
#: Covers the shipped datasets (arithmetic, modular arithmetic, parity) and short answers.
DEFAULT_ALPHABET = "0123456789+-*/%=()<>.,:;?!'\" \nabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET, number_tokens: int = 0) -> PreTrainedTokenizerFast:
    """Return a left-padding tokenizer with one token per character of ``alphabet``.

    With ``number_tokens = n`` every integer ``0 .. n-1`` is one token and digit runs are
    not split (larger numbers become ``<unk>``): the tokenisation of the grokking
    literature, where ``a + b mod p`` is four tokens and the answer one.
    """
    chars = sorted(set(alphabet))
    numbers = [str(i) for i in range(number_tokens) if str(i) not in chars]
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *chars, *numbers])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    pattern = r"\d+|[\s\S]" if number_tokens else r"[\s\S]"
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )
    tokenizer.padding_side = "left"
    return tokenizer
