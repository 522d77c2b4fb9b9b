#!/usr/bin/env python3
"""Renders the Helm chart deploy/k8s/strait with the real Helm engine (helm-python-sdk) and
prints its manifests as one JSON array (templates only; the CRDs are in the chart's crds/).

Usage: render_chart.py VALUES [--namespace NS] [--release NAME] [--chart DIR]
VALUES is a YAML or JSON file, or - for standard input. A rendering error (a required value
missing, a value the chart's schema refuses) is printed to stderr with exit status 1.
"""
import argparse
import json
import os
import sys

import yaml
import helm_python as helm

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy", "k8s", "strait")


def render(values, namespace="strait-system", release="strait", chart=CHART):
    """The chart's manifests for `values`, as a list of objects, in file order."""
    rendered = helm.Chart.load(chart).render(values, name=release, namespace=namespace, is_install=True)
    documents = []
    for path in sorted(rendered):
        if not path.endswith(".yaml"):
            continue
        documents.extend(d for d in yaml.safe_load_all(rendered[path]) if d)
    return documents


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("values")
    parser.add_argument("--namespace", default="strait-system")
    parser.add_argument("--release", default="strait")
    parser.add_argument("--chart", default=CHART)
    args = parser.parse_args()
    text = sys.stdin.read() if args.values == "-" else open(args.values).read()
    values = yaml.safe_load(text) or {}
    try:
        documents = render(values, args.namespace, args.release, args.chart)
    except Exception as error:  # the SDK's errors carry Helm's message
        print(f"render_chart: {error}", file=sys.stderr)
        sys.exit(1)
    json.dump(documents, sys.stdout)


if __name__ == "__main__":
    main()
