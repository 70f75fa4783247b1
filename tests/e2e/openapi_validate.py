"""Validates the admin API's OpenAPI document with openapi-spec-validator (OpenAPI 3.1 rules,
JSON Schema 2020-12 for every schema object). Usage: openapi_validate.py URL TOKEN"""
import json
import sys
import urllib.request

from openapi_spec_validator import validate
from openapi_spec_validator.validation.validators import OpenAPIV31SpecValidator

url, token = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
with urllib.request.urlopen(request) as response:
    document = json.load(response)
assert document["openapi"].startswith("3.1"), document["openapi"]
validate(document, cls=OpenAPIV31SpecValidator)
print(f"PASS {len(document['paths'])} paths valid OpenAPI 3.1")
