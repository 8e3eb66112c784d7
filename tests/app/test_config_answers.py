"""What the API answers for configs an attacker or an unlucky user sends: a 422 in words, never a 500."""

import pytest

from app.errors import human_message
from tests.utils.factories import SEED_SNIPPET


def messages(response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {str(error["loc"][-1]): error["msg"] for error in response.json()["detail"]}


@pytest.mark.parametrize("body", [b'{"validation_prompt": "\\ud800"}', b'{"\\ud800": 1}', b'{"model_type": "\\udfff"}'])
def test_a_lone_surrogate_is_a_422_that_names_it(client, body):
    response = client.post("/api/runs", content=body, headers={"Content-Type": "application/json"})
    (message,) = messages(response).values()
    assert "\\ud800" in message or "\\udfff" in message
    assert client.get("/api/runs").json()["total"] == 0


def test_true_is_not_a_step_count_and_huge_numbers_are_refused(client):
    errors = messages(client.post("/api/runs", json={"max_train_steps": True, "seed": 10**29}))
    assert errors == {"max_train_steps": "must be a number, not true or false; got true",
                      "seed": f"must be at most {2**32 - 1}, got {10**29}"}


def test_a_long_prompt_is_refused_and_nothing_is_stored(client):
    errors = messages(client.post("/api/runs", json=dict(SEED_SNIPPET, validation_prompt="x" * 100_000)))
    assert errors == {"validation_prompt": "is too long: keep it to 4,000 characters (got 100,000)"}
    assert client.get("/api/runs").json()["total"] == 0


def test_each_family_lists_its_own_defaults(client):
    families = {family["name"]: family for family in client.get("/api/families").json()}
    assert families["demo"]["defaults"] == {"resolution": 16, "num_frames": None, "audio_duration": None, "learning_rate": 1e-3}
    assert families["sana"]["defaults"]["resolution"] % families["sana"]["resolution_multiple"] == 0
    assert families["wan"]["defaults"]["num_frames"] % 4 == 1 and families["ace_step"]["defaults"]["audio_duration"] > 0


def test_request_errors_use_the_configs_words():
    error = {"loc": ("query", "ratio"), "type": "float_parsing", "input": "abc", "msg": "Input should be a valid number"}
    assert human_message(error) == "ratio must be a number, got 'abc'"


def test_an_item_of_a_list_parameter_is_named_by_its_parameter(client):
    response = client.get("/compare", params=[("run", "1"), ("run", "x")])
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == [{"loc": ["query", "run", 1], "msg": "run must be a whole number, got 'x'"}]
