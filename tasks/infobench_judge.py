"""InfoBench's DRFR judging protocol, as the course grader runs it (see data/README.md).

For one response, the judge answers the item's decomposed yes/no questions in ONE chat: the first
user turn holds the course's instruction to the judge (`JUDGE_INSTRUCTION`, its SYS_MSG verbatim,
kept in `data/infobench/judge_sys_msg.json`), the generated text and the first question; every
later question is its own user turn, after the judge's earlier replies. A reply that cannot be
read as YES or NO ends the item, and its remaining questions count as not-YES. Item score = YES
answers / questions; the task score is the mean over items (the course's macro average; the
paper's DRFR pools all questions instead).

The judge never sees the item's input: the course folds it into the served prompt, and its
grader's `Input:` block reads a field its eval set does not store, so that block is never sent.

The judge is any function `chat(messages) -> str` taking OpenAI-style messages, so tests use a
fake and real runs use `http_chat`, an OpenAI-compatible /chat/completions endpoint. The course
used gpt-5-nano-2025-08-07 at temperature 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import httpx

from tasks.fresh_prompts import DATA_DIR

Chat = Callable[[list[dict]], str]

# The course's text, byte for byte (its typos and the stray '' at the end included).
JUDGE_INSTRUCTION: str = json.loads((DATA_DIR / "infobench" / "judge_sys_msg.json").read_text())["text"]


def first_turn(output: str, question: str) -> str:
    """The first user turn: the instruction, the generated text, the first question."""
    return f'{JUDGE_INSTRUCTION}\n\nGenerated Text:\n"{output}"\n\nQuestion:\n{question}\n'


def parse_verdict(reply: str) -> bool | None:
    """True for YES, False for NO, None if the reply is neither.

    A reply starting with "yes" or "no" in any case is that answer (so "Nope" is NO); otherwise
    it must contain exactly one of the uppercase words "YES" and "NO" as substrings (so "NOT"
    counts as "NO").
    """
    head = reply.strip().lower()
    if head.startswith("yes"):
        return True
    if head.startswith("no"):
        return False
    has_yes, has_no = "YES" in reply, "NO" in reply
    if has_yes != has_no:
        return has_yes
    return None


def judge_item(chat: Chat, output: str, questions: list[str]) -> list[bool | None]:
    """The judge's verdict on each question, None from the first unreadable reply on.

    A judge call that raises counts as an unreadable reply, as in the course grader (which first
    retries three times; `http_chat` does the retrying). An empty `output` is not judged: the
    course scores it 0 without asking.
    """
    if not output:
        return [None] * len(questions)
    messages: list[dict] = []
    verdicts: list[bool | None] = []
    for question in questions:
        content = first_turn(output, question) if not messages else f"{question}\n"
        messages.append({"role": "user", "content": content})
        try:
            reply = chat(list(messages))
        except Exception:  # any failure of the judge ends the item, as in the course
            break
        messages.append({"role": "assistant", "content": reply})
        verdict = parse_verdict(reply)
        verdicts.append(verdict)
        if verdict is None:
            break
    return verdicts + [None] * (len(questions) - len(verdicts))


def item_score(verdicts: list[bool | None]) -> float:
    """YES answers over all questions of the item; 0.0 for an item without questions."""
    return sum(v is True for v in verdicts) / len(verdicts) if verdicts else 0.0


def task_score(item_scores: list[float]) -> float:
    """The mean of the item scores (0.0 for no items)."""
    return sum(item_scores) / len(item_scores) if item_scores else 0.0


def http_chat(url: str, model: str, api_key: str | None = None, temperature: float | None = None,
              attempts: int = 3, timeout_s: float = 120.0) -> Chat:
    """A judge backed by an OpenAI-compatible endpoint; `url` is the base, e.g. ".../v1".

    Each call makes up to `attempts` tries, with exponential backoff, before the error propagates.
    `temperature=None` leaves the endpoint's default (some models accept no other).
    """
    endpoint = url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.Client(timeout=timeout_s, headers=headers)

    def post(messages: list[dict]) -> str:
        body = {"model": model, "messages": messages}
        if temperature is not None:
            body["temperature"] = temperature
        response = client.post(endpoint, json=body)
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"] or ""

    def chat(messages: list[dict]) -> str:
        for attempt in range(attempts - 1):
            try:
                return post(messages)
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                time.sleep(2 ** attempt)
        return post(messages)

    return chat


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `--judge-url`, `--judge-model` and `--judge-temperature` to a command's parser."""
    parser.add_argument("--judge-url", help="base URL of an OpenAI-compatible API, e.g. https://host/v1")
    parser.add_argument("--judge-model", help="judge model name (the course used gpt-5-nano-2025-08-07)")
    parser.add_argument("--judge-temperature", type=float, default=None,
                        help="judge sampling temperature (default: the endpoint's; the course used 1.0)")


def chat_from_args(args: argparse.Namespace) -> Chat:
    """The judge named by `add_judge_arguments`' options; the key comes from JUDGE_API_KEY or OPENAI_API_KEY."""
    if not args.judge_url or not args.judge_model:
        raise ValueError("the InfoBench judge needs --judge-url and --judge-model")
    api_key = os.environ.get("JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    return http_chat(args.judge_url, args.judge_model, api_key, args.judge_temperature)
