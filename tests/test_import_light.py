"""`import popi_sdk` and `popi --help` must not pull torch or the API clients: a web app that
personalizes an API model with cached summaries should not load a GPU stack."""

import subprocess
import sys

HEAVY = ["torch", "transformers", "trl", "openai", "anthropic", "sky", "fastapi", "uvicorn", "aiohttp"]


def _loaded_after(code: str) -> set[str]:
    probe = code + "\nimport sys, json; print(json.dumps(sorted(set(sys.modules))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    import json

    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_does_not_load_heavy_modules():
    loaded = _loaded_after("import popi_sdk; popi_sdk.Personalizer; popi_sdk.UserSignals")
    assert not [m for m in HEAVY if m in loaded]


def test_import_does_not_load_the_data_modules():
    """Loaders and synthetic-data generators are for `popi data` and training, not for serving."""
    loaded = _loaded_after("import popi_sdk; popi_sdk.Personalizer(store=':memory:')")
    assert not [m for m in loaded if m.startswith("popi_sdk.data")]


def test_cli_help_does_not_load_heavy_modules():
    code = (
        "import sys\nsys.argv=['popi','--help']\nfrom popi_sdk.cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass"
    )
    loaded = _loaded_after(code)
    assert not [m for m in HEAVY if m in loaded]


def test_popi_help_runs():
    out = subprocess.run([sys.executable, "-m", "popi_sdk.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for command in ("demo", "summarize", "generate", "forget", "serve"):
        assert command in out.stdout
