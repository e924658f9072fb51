"""A tokenizer with one word per token id, for serving models with dummy weights.

``vllm serve`` and vLLM's own ``vllm bench serve`` need a tokenizer; a dummy-weight
model has none. This one maps id ``i`` to the word ``<ti>`` (WordLevel model,
WhitespaceSplit pre-tokenizer, words joined by spaces on decode), so decoding any
id list and encoding the text again gives the same ids, and text lengths in tokens
are exact. BOS / EOS / pad are ordinary ids of the vocabulary registered as special
tokens; when the model has a BOS id, encoding with special tokens prepends it, as a
Llama tokenizer does. Unknown words map to id 0.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

# Used by /v1/chat/completions: message contents joined by spaces, nothing added.
PLAIN_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% if not loop.last %} {% endif %}{% endfor %}"


def token_word(token_id: int) -> str:
    """Returns the vocabulary word of ``token_id``, '<t{id}>'."""
    return f"<t{token_id}>"


def ids_to_text(token_ids: Iterable[int]) -> str:
    """Returns the text that the synthetic tokenizer encodes to exactly ``token_ids`` (no special tokens added)."""
    return " ".join(token_word(i) for i in token_ids)


def build_synthetic_tokenizer(
    vocab_size: int, bos_token_id: int | None, eos_token_id: int | None, pad_token_id: int | None = None
) -> PreTrainedTokenizerFast:
    """Returns a fast tokenizer of ``vocab_size`` words '<t0>'..'<tN-1>', with the given special ids."""
    for label, token_id in (("bos", bos_token_id), ("eos", eos_token_id), ("pad", pad_token_id)):
        if token_id is not None and not 0 <= token_id < vocab_size:
            raise ValueError(f"{label}_token_id {token_id} is outside the vocabulary of {vocab_size}")
    vocab = {token_word(i): i for i in range(vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=token_word(0)))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos_token_id is not None:
        bos = token_word(bos_token_id)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, bos_token_id)]
        )
    special = {}
    if bos_token_id is not None:
        special["bos_token"] = token_word(bos_token_id)
    if eos_token_id is not None:
        special["eos_token"] = token_word(eos_token_id)
    if pad_token_id is not None:
        special["pad_token"] = token_word(pad_token_id)
    elif eos_token_id is not None:
        special["pad_token"] = token_word(eos_token_id)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **special)
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer
