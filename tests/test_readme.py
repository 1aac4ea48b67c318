"""The README documents every setting and keeps its two set-up commands on top."""

import re
from pathlib import Path

from fedvla.core.config import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"`(FEDVLA_[A-Z0-9_]+)`", README))

    expected = {f"FEDVLA_{name.upper()}" for name in Settings.model_fields}

    assert expected - documented == set()


def test_the_first_commands_are_serve_and_test() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, re.DOTALL)

    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["bash scripts/serve.sh", "bash scripts/test.sh"]
