"""Parses a Prometheus text exposition (stdin) with the official client's parser and prints its
families as JSON: [{"name", "type", "samples": [[name, labels, value], ...]}]. A text the parser
refuses makes it exit non-zero."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = [
    {"name": f.name, "type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
    for f in text_string_to_metric_families(sys.stdin.read())
]
json.dump(families, sys.stdout)
