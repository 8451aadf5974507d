"""Personalize an existing OpenAI app with `popi serve`: point base_url at it, send user=.

    popi serve --generator openai:gpt-4o-mini            # in another terminal, OPENAI_API_KEY set
    python examples/existing_openai_app.py --summary "Maya is six and loves dinosaurs."
"""

import argparse
import os

from openai import OpenAI

PROMPT = "Why is the sky blue?"


def main(argv=None):
    ap = argparse.ArgumentParser(description="Ask one question as two users through popi serve.")
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default=os.environ.get("POPI_SERVE_API_KEY", "none-on-loopback"))
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--summary", help="first store this as maya's summary (PUT /v1/users/maya/summary)")
    ap.add_argument("--max-tokens", type=int, default=200)
    args = ap.parse_args(argv)

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)  # the app's only change
    if args.summary:
        client.put("/users/maya/summary", body={"text": args.summary}, cast_to=object)
    for user in ("maya", "someone-new"):
        raw = client.chat.completions.with_raw_response.create(
            model=args.model, user=user, max_tokens=args.max_tokens,
            messages=[{"role": "user", "content": PROMPT}])
        print(f"[{user}] personalized: {raw.headers.get('x-popi-personalized')}")
        print(raw.parse().choices[0].message.content, end="\n\n")


if __name__ == "__main__":
    main()
