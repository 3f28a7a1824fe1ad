"""Generation backends for prediction: the sampling settings, per-item seeds, the counter-based
Gumbel noise they drive, and the two generators (HF `generate`, vLLM) that turn prompt ids into
candidates. Separate from the flow so that how a continuation is drawn can be read (and
changed) in one place.

Sampling is seeded per item and per continuation, from (--seed, member, item uid, sample
index), through counter-based noise (`ItemSampler`): an item's continuations do not depend on
which items share its batch, the batch size, the world size, or whether the run was resumed.
"""

import hashlib
import importlib.util
from dataclasses import dataclass, fields

from ..core.errors import UserError

BACKENDS = ("hf", "vllm")
DEVICE_MAPS = ("rank", "auto")


@dataclass(frozen=True)
class Sampling:
    """How continuations are drawn (the sampling flags); part of what the shards record, so a
    rerun with other settings never resumes from them."""

    temperature: float = 0.7  # the defaults of prediction's flags, and what a training run's final fidelity uses
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0
    max_new_tokens: int = 128
    num_samples: int = 1
    candidates_per_member: int = 1
    seed: int = 42

    @classmethod
    def from_options(cls, opts):
        """From `prediction.PredictOptions`: its fields of the same names."""
        return cls(**{f.name: getattr(opts, f.name) for f in fields(cls)})

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def check_backend(backend: str, n_models: int, world: int, evaluate: bool, tensor_parallel_size: int = 1,
                  device_map: str = "rank"):
    if backend != "vllm":
        if tensor_parallel_size != 1:
            raise UserError("--tensor_parallel_size is for --backend vllm; with --backend hf use --device_map auto "
                            "to spread a model over the GPUs")
        if device_map == "auto" and world > 1:
            raise UserError("--device_map auto spreads one model over every GPU: run it as one process, "
                            "not under torchrun")
        return
    if device_map != "rank":
        raise UserError("--device_map is for --backend hf; with --backend vllm use --tensor_parallel_size")
    import torch

    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("the vllm package is not installed")
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible")
    if missing:
        raise UserError(f"--backend vllm: {' and '.join(missing)}; use --backend hf")
    if n_models > 1:
        raise UserError("--backend vllm: ensembles (several --model) need --backend hf, which scores candidates")
    if evaluate:
        raise UserError("--backend vllm: --evaluate scores with HF models; use --backend hf")
    if world > 1:
        raise UserError("--backend vllm: run it as one process (vLLM manages its GPUs), not under torchrun")
    if tensor_parallel_size > torch.cuda.device_count():
        raise UserError(f"--tensor_parallel_size {tensor_parallel_size}: only {torch.cuda.device_count()} GPUs "
                        f"are visible")


def prepare_for_inference(model):
    """Undo the training-time settings a saved config may carry: no KV cache (gradient
    checkpointing) would make generation quadratic, and router logits (MoE aux loss) are not
    wanted when generating or scoring."""
    if hasattr(model.config, "output_router_logits"):
        model.config.output_router_logits = False
    model.config.use_cache = True
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.use_cache = True
    return model


@dataclass
class Candidate:
    token_ids: list  # generated ids, up to and including the stop token when there is one
    text: str  # decoded without special tokens: what the answer is extracted from
    raw: str  # decoded with special tokens, for the examples log
    finished: bool

    def to_json(self) -> dict:
        """One candidate as an ensemble shard line stores it."""
        return {"ids": self.token_ids, "text": self.text, "raw": self.raw, "finished": self.finished}

    @classmethod
    def from_json(cls, d: dict) -> "Candidate":
        return cls(list(d["ids"]), d["text"], d["raw"], bool(d["finished"]))


def stop_token_ids(tokenizer, fmt, model=None) -> list:
    ids = [fmt.end_of_turn_id, tokenizer.eos_token_id]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None) if model is not None else None
    ids += gen_eos if isinstance(gen_eos, list) else [gen_eos]
    out = []
    for i in ids:
        if isinstance(i, int) and i >= 0 and i not in out:
            out.append(i)
    return out


def _candidate(tokenizer, ids, stops) -> Candidate:
    cut = next((k for k, t in enumerate(ids) if t in stops), None)
    kept = ids if cut is None else ids[:cut + 1]
    body = kept if cut is None else kept[:-1]
    return Candidate(list(kept), tokenizer.decode(body, skip_special_tokens=True),
                     tokenizer.decode(kept, skip_special_tokens=False), cut is not None)


def sample_seed(seed: int, member: int, uid: str, index: int) -> int:
    """The seed of one continuation: the run's seed, the member, the item's content uid and the
    sample's index, nothing about the batch, the rank or an earlier run. 63 bits (vLLM and
    torch take a non-negative int64)."""
    h = hashlib.blake2b(f"{seed}\x00{member}\x00{uid}\x00{index}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big") >> 1


_MASK32 = 0xFFFFFFFF


def _mul32_(x, c: int, scratch):
    """x = (x * c) mod 2**32 in place, for int64 tensors holding 32-bit values, without int64
    overflow. In place, with one scratch tensor of x's shape: on CPU each fresh [rows, vocab]
    buffer costs more in page faults than the arithmetic on it (the noise took 3x as long)."""
    import torch

    torch.mul(x, c >> 16, out=scratch)
    scratch.bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    return x.mul_(c & 0xFFFF).add_(scratch).bitwise_and_(_MASK32)


def _mix32_(x, scratch):
    """murmur3's finalizer, in place: a bijection on 32-bit values whose every output bit
    depends on every input bit."""
    import torch

    x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=scratch))
    _mul32_(x, 0x85EBCA6B, scratch)
    x.bitwise_xor_(torch.bitwise_right_shift(x, 13, out=scratch))
    _mul32_(x, 0xC2B2AE35, scratch)
    return x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=scratch))


def _noise(keys, step: int, tokens):
    """Gumbel(0, 1) noise of each (key, token) pair, `keys` and `tokens` (int64) broadcast
    against each other; `tokens` is overwritten."""
    import torch

    k1 = keys & _MASK32
    k2 = (keys >> 32) & _MASK32
    small = torch.empty_like(k1)
    stream = _mix32_(k1 ^ _mix32_(torch.full_like(k1, step & _MASK32).bitwise_xor_(k2), small), small)
    token = _mul32_(tokens, 0x9E3779B1, torch.empty_like(tokens))
    bits = token ^ stream
    scratch = torch.empty_like(bits)
    bits = _mix32_(_mix32_(bits, scratch).bitwise_xor_(k2), scratch)
    # 24 bits; the top one rounds to 1.0 in float32, whose noise is +inf (NaN on a token top-k or
    # top-p removed, and argmax picks NaN): held just below 1, every other value as it was
    uniform = bits.bitwise_right_shift_(8).to(torch.float32).add_(0.5).mul_(1.0 / (1 << 24)).clamp_(max=1 - 2**-24)
    return uniform.log_().neg_().log_().neg_()


def gumbel_noise(keys, step: int, vocab: int):
    """Gumbel(0, 1) noise of shape [rows, vocab], a pure function of each row's 64-bit key, the
    decoding step and the token id: counter-based, so a row's noise is the same in any batch and
    on any device (no generator state to share)."""
    import torch

    return _noise(keys.unsqueeze(1), step, torch.arange(vocab, device=keys.device, dtype=torch.int64).unsqueeze(0))


class ItemSampler:
    """Sampling by the Gumbel-max trick: argmax(warped logits + Gumbel noise) is a draw from
    softmax(warped logits), the distribution HF's multinomial sampling draws from. The noise of
    row r comes from that row's own key, so each continuation depends on its own seed only
    (HF draws every row of a batch from one global generator, which ties an item's text to its
    batch). Used as the last logits processor of a greedy `generate`.

    Where top-k or top-p left most tokens at -inf (top-k 50, the default, keeps 50 of 151,936),
    only the tokens still in the draw get noise: the same noise, at a fraction of the cost."""

    def __init__(self, keys, prompt_width: int):
        self.keys, self.width = keys, prompt_width

    def __call__(self, input_ids, scores):
        import torch

        keys, step = self.keys.to(scores.device), input_ids.shape[1] - self.width
        live = torch.isfinite(scores)
        if int(live.sum()) * 4 > live.numel():
            return scores + gumbel_noise(keys, step, scores.shape[-1]).to(scores.dtype)
        rows, tokens = live.nonzero(as_tuple=True)
        out = scores.clone()
        out[rows, tokens] += _noise(keys[rows], step, tokens.clone()).to(scores.dtype)
        return out


class HFGenerator:
    """Batched `generate` over left-padded prompts; `n` candidates per prompt, each sampled with
    its own seed (`sample_seed`)."""

    def __init__(self, model, tokenizer, fmt, sampling: Sampling, n: int):
        from transformers import (GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper,
                                  TopKLogitsWarper, TopPLogitsWarper)

        self.model, self.tokenizer = model, tokenizer
        self.stops = stop_token_ids(tokenizer, fmt, model)
        self.n = n
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stops[0]
        # Greedy search plus our own noise (ItemSampler) samples; HF's sampling mode would draw from
        # its global generator. The warpers are HF's own, in HF's order.
        self.config = GenerationConfig(do_sample=False, num_beams=1, num_return_sequences=1,
                                       max_new_tokens=sampling.max_new_tokens, pad_token_id=self.pad_id,
                                       eos_token_id=self.stops, repetition_penalty=sampling.repetition_penalty,
                                       use_cache=True)
        self.warpers = LogitsProcessorList()
        if sampling.greedy:  # one greedy line, repeated: greedy search cannot return distinct sequences
            self.draws = 1
        else:
            self.draws = n
            if sampling.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k:
                self.warpers.append(TopKLogitsWarper(top_k=sampling.top_k, min_tokens_to_keep=1))
            if sampling.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p=sampling.top_p, min_tokens_to_keep=1))
        self.sampled = not sampling.greedy

    def generate(self, prompts, seeds) -> list:
        """`seeds[i][j]`: the seed of prompt i's j-th candidate (one per draw)."""
        import torch
        from transformers import LogitsProcessorList

        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        rows = [(b, j) for b in range(len(prompts)) for j in range(self.draws)]
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (b, _) in enumerate(rows):
            p = prompts[b]
            input_ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
        processors = LogitsProcessorList(self.warpers)
        if self.sampled:
            keys = torch.tensor([int(seeds[b][j]) for b, j in rows], dtype=torch.int64, device=device)
            processors.append(ItemSampler(keys, width))
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                      generation_config=self.config, logits_processor=processors)
        new = out[:, width:].tolist()
        result = []
        for b in range(len(prompts)):
            cands = [_candidate(self.tokenizer, new[b * self.draws + j], self.stops) for j in range(self.draws)]
            result.append([cands[j % self.draws] for j in range(self.n)])
        return result


class VllmGenerator:
    """One model on vLLM, fed the same prompt ids (never re-tokenized text). Each request has its
    own seed (the item's), so an item's samples do not depend on the batch. Not testable here
    (no vLLM, no GPU): kept to the calls vLLM documents."""

    def __init__(self, model_dir, tokenizer, fmt, sampling: Sampling, max_model_len: int,
                 tensor_parallel_size: int = 1):
        from vllm import LLM, SamplingParams

        self.tokenizer = tokenizer
        self.stops = stop_token_ids(tokenizer, fmt)
        self.llm = LLM(model=str(model_dir), tokenizer=str(model_dir), seed=sampling.seed,
                       max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size)
        self.n = sampling.num_samples
        # vLLM rejects n > 1 with temperature 0: ask for one greedy line and repeat it, as HF does
        self.draws = 1 if sampling.greedy else self.n
        params = dict(n=self.draws, max_tokens=sampling.max_new_tokens,
                      repetition_penalty=sampling.repetition_penalty, stop_token_ids=self.stops,
                      skip_special_tokens=False)
        if sampling.greedy:
            params.update(temperature=0.0)
        else:
            params.update(temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.top_k > 0:
                params["top_k"] = sampling.top_k
        self._params, self._sampling_cls = params, SamplingParams

    def generate(self, prompts, seeds) -> list:
        params = [self._sampling_cls(seed=int(s[0]), **self._params) for s in seeds]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        result = []
        for o in outs:
            cands = []
            for c in o.outputs:
                ids = list(c.token_ids)
                if c.finish_reason == "stop" and (not ids or ids[-1] not in self.stops) and c.stop_reason in self.stops:
                    ids.append(c.stop_reason)
                cands.append(_candidate(self.tokenizer, ids, self.stops))
            result.append([cands[j % len(cands)] for j in range(self.n)])
        return result
