"""From a validated request to one plan per prompt: its task, model, engine prompt (rendered and
tokenized off the event loop), sampling parameters and priority.

Everything that can be refused is refused here, before a slot is taken or an engine touched: a
prompt too long for the context (by a byte count first, then by tokens), a template error, a
`max_tokens` that cannot fit, parameters outside the vocabulary.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor

from api.chat_template_sandbox import TemplateError, render_untrusted
from api.errors import APIError, bad_request
from api.protocol import GenerationRequest
from models.sampler import SamplingParams
from scheduler.async_engine import AsyncEngine
from tasks.length_budget import length_budget
from tasks.policy import TaskPolicy
from tasks.router import classify


@dataclasses.dataclass(slots=True)
class PromptPlan:
    """How one prompt of a request is served."""

    index: int
    original: str | list                # as the client sent it (text, token ids, or a conversation)
    task: str
    role: str                           # "large" or "small"
    engine: AsyncEngine
    engine_prompt: str | None           # the text the model continues (None for token-id prompts)
    prompt_ids: list[int]
    params: SamplingParams
    priority: float
    policy: TaskPolicy
    samples: int = 1                    # engine candidates per returned choice (best-of-n)

    @property
    def visible_text(self) -> str:
        """What the router read: the prompt text, or the user turns of a conversation."""
        return _visible_text(self.original)


def _visible_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if prompt and isinstance(prompt[0], dict):
        return "\n".join(m["content"] for m in prompt if m["role"] == "user")
    return ""


def max_token_bytes(tokenizer) -> int:
    """The most bytes of text one token can stand for (an upper bound), so that a prompt of more than
    max_model_len times this many bytes is known to be too long without tokenizing it."""
    if tokenizer is None:
        return 1
    return max(len(token.encode("utf-8")) for token in tokenizer.get_vocab())


class Planner:
    """Routes and prepares prompts for the engines, doing the CPU-heavy parts on its own threads."""

    def __init__(self, engines: dict[str, AsyncEngine], names: dict[str, str], policies: dict[str, TaskPolicy],
                 trust_request_chat_template: bool = False, max_completions_per_request: int = 64):
        self.engines, self.names, self.policies = engines, names, policies
        self.trust_request_chat_template = trust_request_chat_template
        self.max_completions_per_request = max_completions_per_request
        self._max_token_bytes = {role: max_token_bytes(e.tokenizer) for role, e in engines.items()}
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="switchyard-prepare")

    def role_for_model(self, model: str | None) -> str | None:
        """The role a request's `model` names (None: let the policy choose); 404 for an unknown name."""
        if model is None:
            return None
        for role, name in self.names.items():
            if model == name:
                return role
        raise APIError(404, f"the model {model!r} does not exist; served models: {sorted(set(self.names.values()))}",
                       param="model", code="model_not_found")

    async def plan(self, req: GenerationRequest) -> list[PromptPlan]:
        """One plan per prompt, in prompt order; raises APIError for anything that cannot be served."""
        forced_role = self.role_for_model(req.model)
        if req.chat_template is not None and not self.trust_request_chat_template:
            raise bad_request("this server does not accept chat templates from requests (start it with "
                              "--trust-request-chat-template to allow them)", "chat_template")
        completions = len(req.prompts) * req.n
        if completions > self.max_completions_per_request:
            raise bad_request(f"too many completions in one request: {len(req.prompts)} prompts x n={req.n} = "
                              f"{completions}, at most {self.max_completions_per_request}", "n")
        loop = asyncio.get_running_loop()
        plans = []
        for i, prompt in enumerate(req.prompts):
            rendered = None
            if req.chat_template is not None:
                rendered = await self._render_untrusted(req, prompt, forced_role)
            plans.append(await loop.run_in_executor(self._executor, self._plan_one, req, i, prompt, forced_role,
                                                    rendered))
        return plans

    async def _render_untrusted(self, req: GenerationRequest, messages: list[dict], role: str | None) -> str:
        tokenizer = self.engines[role or "large"].tokenizer
        variables = {**req.chat_template_kwargs, "messages": messages, "add_generation_prompt": True,
                     "bos_token": getattr(tokenizer, "bos_token", None) or "",
                     "eos_token": getattr(tokenizer, "eos_token", None) or ""}
        try:
            return await render_untrusted(req.chat_template, variables)
        except TemplateError as e:
            raise bad_request(str(e), "chat_template") from None

    def _plan_one(self, req: GenerationRequest, index: int, prompt, forced_role: str | None,
                  rendered: str | None) -> PromptPlan:
        text = _visible_text(prompt)
        size = len(text.encode("utf-8"))
        self._check_size(size, forced_role or "large", index)  # before the router reads the text
        task = classify(text) if text else "general"
        policy = self.policies[task]
        role = forced_role or policy.choose_model(text)
        engine = self.engines[role]
        if engine is not self.engines[forced_role or "large"]:
            self._check_size(size, role, index)
        engine_prompt = rendered if rendered is not None else self._engine_prompt(req, policy, prompt, engine, role)
        if engine_prompt is None:
            prompt_ids = list(prompt)
            bad = next((t for t in prompt_ids if t >= engine.vocab_size), None)
            if bad is not None:
                raise bad_request(f"prompt {index}: token id {bad} is outside the vocabulary of "
                                  f"{engine.vocab_size}", "prompt")
        elif engine.tokenizer is None:
            raise bad_request(f"the model {self.names[role]!r} has no tokenizer (dummy weights): send token ids",
                              "prompt")
        else:
            prompt_ids = engine.tokenizer(engine_prompt).input_ids
        # A streamed answer is sent as it is generated, so it cannot be picked among candidates.
        samples = policy.best_of if not req.stream else 1
        params = self._params(req, policy, text, samples, len(prompt_ids), engine, index)
        return PromptPlan(index, prompt, task, role, engine, engine_prompt, prompt_ids, params,
                          policy.priority + req.priority, policy, samples)

    def _check_size(self, size: int, role: str, index: int) -> None:
        """Refuse a prompt of `size` bytes that no tokenization could fit into the role's context."""
        limit = self.engines[role].max_model_len * self._max_token_bytes[role]
        if size > limit:
            raise bad_request(f"prompt {index} is {size} bytes: more than the model's context of "
                              f"{self.engines[role].max_model_len} tokens can hold", "prompt")

    def _engine_prompt(self, req: GenerationRequest, policy: TaskPolicy, prompt, engine: AsyncEngine,
                       role: str) -> str | None:
        """The text the engine continues: the chat template applied where the request or the policy
        asks for it; None for token ids, which are sent as they are."""
        if not req.chat and not isinstance(prompt, str):
            return None
        if not req.chat and not policy.chat_template:
            return prompt
        tokenizer = engine.tokenizer
        if tokenizer is None or tokenizer.chat_template is None:
            if req.chat:
                raise bad_request(f"the model {self.names[role]!r} has no chat template", "messages")
            return prompt
        kwargs = dict(req.chat_template_kwargs)
        if policy.enable_thinking is not None:
            kwargs.setdefault("enable_thinking", policy.enable_thinking)
        messages = prompt if req.chat else [{"role": "user", "content": prompt}]
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        except Exception as e:  # the model's own template rejecting this conversation (e.g. role order)
            raise bad_request(f"the chat template rejected the request: {type(e).__name__}: {e}", "messages") from e

    def _params(self, req: GenerationRequest, policy: TaskPolicy, text: str, samples: int, prompt_tokens: int,
                engine: AsyncEngine, index: int) -> SamplingParams:
        """The request's sampling fields over the policy's defaults, with `max_tokens` capped by the
        policy (and the instruction's length words), then checked against the context (vLLM's rule)."""
        candidates = {"temperature": policy.best_of_temperature} if samples > 1 else {}
        fields = {**policy.sampling, **candidates, **req.sampling}
        caps = [c for c in (policy.max_tokens, policy.length_from_instruction and length_budget(text)) if c]
        if caps:
            fields["max_tokens"] = min(fields.get("max_tokens", math.inf), *caps)
        elif "max_tokens" not in fields and req.chat:
            fields["max_tokens"] = None  # OpenAI's chat default: until EOS or the context
        context = engine.max_model_len
        room = context - prompt_tokens
        if room < 1:
            raise bad_request(f"prompt {index} has {prompt_tokens} tokens, but the model's context limit is "
                              f"{context} tokens including at least one generated token", "prompt")
        if "min_tokens" in fields and fields.get("max_tokens"):
            fields["min_tokens"] = min(fields["min_tokens"], fields["max_tokens"])
        try:
            params = SamplingParams(n=req.n * samples, logprobs=req.logprobs, **fields)
            params.check_vocab(engine.vocab_size)
        except (TypeError, ValueError) as e:
            raise bad_request(str(e)) from e
        if params.max_tokens is None:
            params.max_tokens = room
        elif params.max_tokens > room:
            raise bad_request(f"this model's context limit is {context} tokens, but prompt {index} has "
                              f"{prompt_tokens} tokens and max_tokens is {params.max_tokens} "
                              f"({prompt_tokens + params.max_tokens} in all); lower max_tokens or the prompt",
                              "max_tokens")
        return params
