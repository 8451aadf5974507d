"""Personalize Claude: summarize a user's preferences once, cache the summary, answer with it.
The summary travels in the Messages API's ``system`` field.

    export ANTHROPIC_API_KEY=sk-ant-...
    python examples/personalize_claude.py
    python examples/personalize_claude.py --model claude-haiku-4-5 --base-url https://gateway.example
"""

import argparse
import sys
from pathlib import Path

from popi_sdk import Personalizer
from popi_sdk.backends import get_backend
from popi_sdk.data import read_users
from popi_sdk.errors import PopiError

PROMPTS = ["How does the internet work?", "What should I do this weekend?", "Why do cats purr?"]


def main(argv=None, backend=None):
    ap = argparse.ArgumentParser(description="Answer a few prompts for one user with Claude.")
    ap.add_argument("--model", default="claude-sonnet-4-5")
    ap.add_argument("--base-url", help="default: ANTHROPIC_BASE_URL, else api.anthropic.com")
    ap.add_argument("--summarizer", help="summarizer backend, e.g. a trained checkpoint folder "
                    "(default: the same model: the paper's Inference-Prompting)")
    ap.add_argument("--store", help="summary store (default: POPI_STORE, else ~/.cache/popi)")
    ap.add_argument("--max-tokens", type=int, default=300)
    args = ap.parse_args(argv)

    claude = backend or get_backend(f"anthropic:{args.model}", base_url=args.base_url)
    p = Personalizer(summarizer=args.summarizer or claude, generator=claude, store=args.store)
    user = read_users(Path(__file__).with_name("demo_users.jsonl"))[0]
    summary = p.summarize(user)  # one model call the first time, then read from the store
    print(f"Summary of {user.user_id} by {summary.summarizer}: {summary}\n")
    for prompt in PROMPTS:
        answer = p.generate(prompt, summary=summary, max_new_tokens=args.max_tokens)
        print(f"> {prompt}\n{answer}\n")


if __name__ == "__main__":
    try:
        main()
    except PopiError as e:  # a missing key, an unreachable server: one line saying what to do
        sys.exit(f"error: {e}")
