"""The fast stream-chunk framing says exactly what the general body builder says, for any text."""

import json

from hypothesis import given
from hypothesis import strategies as st

from api.choice import ChoiceState
from api.protocol import GenerationRequest
from api.responses import ResponseWriter


class _Plan:
    index, task, role, original = 0, "general", "large", "a prompt"


@given(text=st.text(), chat=st.booleans(), name=st.text(min_size=1), index=st.integers(0, 64))
def test_chunk_event_equals_the_general_body(text, chat, name, index):
    writer = ResponseWriter(GenerationRequest(prompts=["x"], sampling={}, chat=chat), "id", name, {"large": name})
    choice = ChoiceState(index, _Plan())
    for finish in (None, "stop"):
        fast = writer.chunk_event(choice, text, finish)
        general = writer.chunk([writer.chunk_choice(choice, text, finish)])
        assert fast.startswith("data: ") and fast.endswith("\n\n")
        assert json.loads(fast[6:]) == json.loads(general[6:])
