"""Render the Cloud Run service template for one deployment (used by .github/workflows/cd.yml).

`manifest` fills in PROJECT_ID, REGION and IMAGE, names the new revision, and keeps all
traffic on the revision serving now while the new one gets a tag and no traffic; on the
first deployment the new revision takes all traffic. `serving` reads
`gcloud run services describe --format=json` and prints the revision with the most traffic.

    python deploy/cloudrun/render.py manifest deploy/cloudrun/service.yaml \
        --image REGION-docker.pkg.dev/PROJECT/REPO/mnistops:SHA --project PROJECT \
        --region REGION --service mnistops --revision mnistops-abc1234-1 --tag sha-abc1234 \
        [--serving mnistops-0ff1ce5-1] --out build/service.yaml
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

PLACEHOLDERS = ("PROJECT_ID", "REGION", "IMAGE")
TEXT_PLACEHOLDERS = ("PROJECT_ID", "REGION")  # inside longer strings; IMAGE is a whole value
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
PINNED_IMAGE = re.compile(r"[^@\s]+(:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})")


def render(
    template: str,
    *,
    image: str,
    project: str,
    region: str,
    service: str,
    revision: str,
    tag: str,
    serving: str | None = None,
) -> dict[str, Any]:
    """The service manifest for one deployment, every placeholder filled in.

    Raises:
        ValueError: an argument Cloud Run would refuse, or a placeholder left unfilled.
    """
    _check(image=image, service=service, revision=revision, tag=tag)
    values = {"PROJECT_ID": project, "REGION": region}
    text = re.sub(r"\b(" + "|".join(TEXT_PLACEHOLDERS) + r")\b", lambda m: values[m[1]], template)
    manifest: dict[str, Any] = yaml.safe_load(text)
    manifest["metadata"]["name"] = service
    template_ = manifest["spec"]["template"]
    template_["metadata"]["name"] = revision
    for container in template_["spec"]["containers"]:
        if container["image"] == "IMAGE":
            container["image"] = image
    new = {"revisionName": revision, "tag": tag}
    manifest["spec"]["traffic"] = (
        [{"revisionName": serving, "percent": 100}, {**new, "percent": 0}]
        if serving
        else [{**new, "percent": 100}]
    )
    left = re.findall(r"\b(" + "|".join(PLACEHOLDERS) + r")\b", json.dumps(manifest))
    if left:
        raise ValueError(f"placeholders left unfilled in the manifest: {sorted(set(left))}")
    return manifest


def _check(*, image: str, service: str, revision: str, tag: str) -> None:
    if not PINNED_IMAGE.fullmatch(image) or image.endswith(":latest"):
        raise ValueError(f"image must carry the commit's tag or a digest, not {image!r}")
    if not (DNS_LABEL.fullmatch(revision) and revision.startswith(f"{service}-")):
        raise ValueError(
            f"revision must be '{service}-SUFFIX', lowercase letters, digits and '-', "
            f"at most 63 characters, got {revision!r}"
        )
    if not DNS_LABEL.fullmatch(tag):
        raise ValueError(f"tag must be lowercase letters, digits and '-', got {tag!r}")


def serving_revision(describe: str) -> str | None:
    """The revision with the most traffic in `gcloud run services describe` JSON, if any."""
    if not describe.strip():
        return None
    targets = json.loads(describe).get("status", {}).get("traffic", [])
    targets = [t for t in targets if t.get("revisionName") and t.get("percent", 0) > 0]
    return max(targets, key=lambda t: t["percent"])["revisionName"] if targets else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    manifest = commands.add_parser("manifest", help="render the service template")
    manifest.add_argument("template", type=Path)
    for name in ("image", "project", "region", "service", "revision", "tag"):
        manifest.add_argument(f"--{name}", required=True)
    manifest.add_argument("--serving", default="", help="the revision serving now, if any")
    manifest.add_argument("--out", type=Path, help="write here instead of stdout")
    serving = commands.add_parser("serving", help="the revision with the most traffic")
    serving.add_argument("describe", type=Path, help="gcloud run services describe JSON")
    args = parser.parse_args(argv)
    if args.command == "serving":
        print(serving_revision(args.describe.read_text()) or "")
        return 0
    options = {k: getattr(args, k) for k in ("image", "project", "region", "service", "revision")}
    try:
        rendered = render(
            args.template.read_text(), **options, tag=args.tag, serving=args.serving or None
        )
    except ValueError as error:
        print(f"render.py: {error}", file=sys.stderr)
        return 2
    text = yaml.safe_dump(rendered, sort_keys=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
