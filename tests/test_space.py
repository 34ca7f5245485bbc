"""The repository runs as a Hugging Face Space as it stands: README front matter agrees with requirements.txt."""

import re

import yaml
from conftest import ROOT


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must open with the Space's YAML front matter between --- lines"
    return yaml.safe_load(match.group(1))


def pinned(package: str) -> str:
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    return pins[package]


def test_front_matter_describes_a_gradio_space_on_the_pinned_gradio():
    meta = front_matter()
    assert meta["sdk"] == "gradio"
    assert str(meta["sdk_version"]) == pinned("gradio")
    assert (ROOT / meta["app_file"]).is_file() and meta["app_file"] == "app.py"
    assert meta["title"] and meta["emoji"] and meta["license"] == "mit"
    assert 0 < len(meta["short_description"]) <= 60  # the Hub refuses longer ones
    assert str(meta["python_version"]) == "3.11"


def test_requirements_pin_everything_the_app_imports():
    for package in ("gradio", "torch", "torchvision", "huggingface-hub", "safetensors", "pillow"):
        assert pinned(package)
