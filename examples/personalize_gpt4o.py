"""Personalize GPT-4o: summarize a user's preferences once, cache the summary, answer with it.

    export OPENAI_API_KEY=sk-...
    python examples/personalize_gpt4o.py
    # any OpenAI-compatible server (vllm serve, transformers serve) instead:
    python examples/personalize_gpt4o.py --model MODEL --base-url http://127.0.0.1:8000/v1
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
    ap = argparse.ArgumentParser(description="Answer a few prompts for one user with GPT-4o.")
    ap.add_argument("--model", default="gpt-4o")
    ap.add_argument("--base-url", help="default: OPENAI_BASE_URL, else api.openai.com")
    ap.add_argument("--summarizer", help="summarizer backend, e.g. a trained checkpoint folder "
                    "(default: the same model: the paper's Inference-Prompting)")
    ap.add_argument("--store", help="summary store (default: POPI_STORE, else ~/.cache/popi)")
    ap.add_argument("--max-tokens", type=int, default=300)
    args = ap.parse_args(argv)

    gpt = backend or get_backend(f"openai:{args.model}", base_url=args.base_url)
    p = Personalizer(summarizer=args.summarizer or gpt, generator=gpt, store=args.store)
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
