"""Rendering a chat template a client sent: in a separate, short-lived Python process under memory,
CPU-time, wall-time and output-size limits, with jinja2's immutable sandbox inside it.

A template is a program. Jinja's sandbox stops it from reaching Python internals, but not from
looping for minutes or building a gigabyte string; only a process of its own can be stopped for
that without harm to the server. It costs a process start (tens of milliseconds), which is why
client templates are opt-in (`--trust-request-chat-template`).
"""

from __future__ import annotations

import asyncio
import json
import sys

MEMORY_LIMIT_BYTES = 512 << 20
TIME_LIMIT_S = 2.0
MAX_OUTPUT_CHARS = 1 << 20

# Runs in the child: limits first, then the template, its output cut off past the size limit.
_CHILD = r"""
import json, resource, sys
job = json.loads(sys.stdin.read())
resource.setrlimit(resource.RLIMIT_AS, (job["memory"], job["memory"]))
cpu = int(job["seconds"]) + 1
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

def raise_exception(message):
    raise ValueError(message)

try:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    parts, size = [], 0
    for piece in env.from_string(job["template"]).generate(**job["variables"]):
        size += len(piece)
        if size > job["max_chars"]:
            raise ValueError(f"the rendered prompt is longer than {job['max_chars']} characters")
        parts.append(piece)
    result = {"text": "".join(parts)}
except MemoryError:
    result = {"error": "the template needs more memory than allowed"}
except RecursionError:
    result = {"error": "the template recurses too deeply"}
except Exception as e:
    result = {"error": f"{type(e).__name__}: {e}"}
sys.stdout.write(json.dumps(result))
"""


class TemplateError(ValueError):
    """The client's template could not be rendered within the limits; the message says why."""


async def render_untrusted(template: str, variables: dict, *, memory_bytes: int = MEMORY_LIMIT_BYTES,
                           seconds: float = TIME_LIMIT_S, max_chars: int = MAX_OUTPUT_CHARS) -> str:
    """`template` rendered with `variables` (JSON values: messages, add_generation_prompt, ...) in a
    sandboxed child process; raises TemplateError on any failure or limit."""
    job = json.dumps({"template": template, "variables": variables, "memory": memory_bytes,
                      "seconds": seconds, "max_chars": max_chars}).encode()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-I", "-c", _CHILD, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(job), timeout=seconds)
    except asyncio.TimeoutError:
        raise TemplateError(f"the chat template took longer than {seconds:g} s to render") from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    try:
        result = json.loads(out)
    except ValueError:
        raise TemplateError("the chat template could not be rendered within the server's limits") from None
    if "error" in result:
        raise TemplateError(f"the chat template failed: {result['error']}")
    return result["text"]
