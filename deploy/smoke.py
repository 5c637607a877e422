"""Smoke-test a deployed mnistops: real MNIST test digits through /predict must be labelled
at least at a given accuracy. Used by the CD pipeline against a new revision's own URL.

    python deploy/smoke.py URL [--token TOKEN] [--digits 200] [--min-accuracy 0.95]
"""

from __future__ import annotations

import argparse
import sys

import httpx

from mnistops.config import load_settings
from mnistops.data import load_mnist


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--token", default=None, help="Bearer token (Cloud Run IAM).")
    parser.add_argument("--digits", type=int, default=200)
    parser.add_argument("--min-accuracy", type=float, default=0.95)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    mnist = load_mnist(load_settings())
    right = 0
    with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=30) as client:
        for image, label in zip(
            mnist.x_test[: args.digits], mnist.y_test[: args.digits], strict=True
        ):
            response = client.post("/predict", json={"image": image.tolist()})
            response.raise_for_status()
            right += response.json()["digit"] == label
    accuracy = right / args.digits
    print(f"{args.url}: {right}/{args.digits} digits right ({accuracy:.3f})")
    return 0 if accuracy >= args.min_accuracy else 1


if __name__ == "__main__":
    sys.exit(main())
