"""The reference scorer over HTTP answers an OpenAI chat completion with tasks.difficulty's
difficulty and factors for the attached image (exact at temperature 0, rounded to 4 decimals)."""

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tasks.difficulty import assess
from tasks.testing.reference_scorer import ReferenceScorer

pytestmark = pytest.mark.integration


def _scene(gain: float) -> np.ndarray:
    yy, xx = np.mgrid[0:96, 0:128]
    grey = np.clip(gain * (128 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0)), 0, 255).astype(np.uint8)
    return np.stack([grey, grey, grey], axis=-1)


def _png_data_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")  # lossless: the server sees these exact pixels
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _ask(client: httpx.Client, base_url: str, image: np.ndarray, seed: int) -> dict:
    response = client.post(
        f"{base_url}/chat/completions",
        json={
            "model": "reference-vlm",
            "temperature": 0,
            "seed": seed,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Rate this frame's difficulty as JSON."},
                        {"type": "image_url", "image_url": {"url": _png_data_uri(image)}},
                    ],
                }
            ],
        },
    )
    assert response.status_code == 200, f"scorer answered {response.status_code}: {response.text}"
    return response.json()


@pytest.mark.parametrize("gain", [1.0, 0.12], ids=["normal", "dark"])
def test_reference_scorer_answers_with_the_difficulty_formula_at_temperature_zero(gain):
    # given an image and the formula's own assessment of it
    image = _scene(gain)
    expected = assess(image)
    # when it is posted to the reference scorer as an OpenAI chat completion, with two seeds
    with ReferenceScorer() as scorer, httpx.Client(timeout=10) as client:
        replies = [_ask(client, scorer.base_url, image, seed) for seed in (1, 2)]
    # then the reply content is JSON carrying the formula's difficulty (4 decimals) and factors
    for reply in replies:
        assert reply["object"] == "chat.completion", f"an OpenAI chat completion: {reply}"
        content = json.loads(reply["choices"][0]["message"]["content"])
        assert content["difficulty"] == round(expected.difficulty, 4), (
            f"temperature 0 is the formula exactly: {content['difficulty']} vs {expected.difficulty:.6f}"
        )
        assert content["factors"] == list(expected.factors), f"factors: {content['factors']} vs {expected.factors}"
        assert reply["usage"]["prompt_tokens"] > 85, f"image tokens billed: {reply['usage']}"


def test_reference_scorer_scores_different_images_differently():
    # guards the test above: a constant answer would not match both a normal and a dark frame
    with ReferenceScorer() as scorer, httpx.Client(timeout=10) as client:
        normal = json.loads(_ask(client, scorer.base_url, _scene(1.0), 0)["choices"][0]["message"]["content"])
        dark = json.loads(_ask(client, scorer.base_url, _scene(0.12), 0)["choices"][0]["message"]["content"])
    assert dark["difficulty"] > normal["difficulty"], f"dark {dark} should be harder than normal {normal}"
    assert "low_light" in dark["factors"] and "low_light" not in normal["factors"], f"{dark} vs {normal}"
