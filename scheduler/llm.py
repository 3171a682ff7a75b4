"""The offline Python API: `LLM(model=...).generate(prompts, SamplingParams(...))`."""

from __future__ import annotations

import itertools

from models.sampler import SamplingParams
from scheduler.engine import EngineConfig, LLMEngine
from scheduler.outputs import RequestOutput, merge_outputs


class LLM:
    """Runs batches of prompts to completion through one continuous-batching engine.

    Keyword arguments are EngineConfig fields, e.g. `LLM(model="embedded", max_num_seqs=64)`.
    """

    def __init__(self, model: str = "embedded", **engine_args):
        self.engine = LLMEngine(EngineConfig(model=model, **engine_args))
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(self, prompts: str | list[str] | list[list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        """Complete every prompt (text or token ids); results come back in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(params_list)} SamplingParams for {len(prompts)} prompts")
        ids = [f"offline-{next(self._ids)}" for _ in prompts]
        deltas: dict[str, list[RequestOutput]] = {rid: [] for rid in ids}
        try:
            for rid, prompt, p in zip(ids, prompts, params_list):
                self.engine.add_request(rid, prompt, p, stream=False)
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    deltas[out.request_id].append(out)
        except BaseException:
            for rid in ids:  # leave the engine clean for the next call
                self.engine.abort_request(rid)
            raise
        return [merge_outputs(deltas[rid]) for rid in ids]

    def chat(self, messages: list[dict] | list[list[dict]],
             params: SamplingParams | list[SamplingParams] | None = None, **template_kwargs) -> list[RequestOutput]:
        """Apply the model's chat template (e.g. enable_thinking=False for Qwen3) and generate; `params`
        as for `generate`, one for all conversations or one each."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer, so no chat template")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True, **template_kwargs)
                   for c in conversations]
        return self.generate(prompts, params)
