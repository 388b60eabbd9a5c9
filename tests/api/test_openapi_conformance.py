"""The API against its own OpenAPI document, by schemathesis: generated requests for every operation
(bounded examples), each response checked against what the document promises (status codes, content
types, response schemas, no server errors)."""

from __future__ import annotations

from typing import Any, Callable

import schemathesis
from hypothesis import HealthCheck, given, settings

from pyphase.api import openapi

EXAMPLES = 25


def test_every_operation_conforms(api_nodes: Callable[..., list[Any]]) -> None:
    (api,) = api_nodes()
    schema = schemathesis.openapi.from_dict(openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(ops) for ops in openapi()["paths"].values())
    checked: dict[str, int] = {}
    for operation in operations:

        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def conforms(case: Any) -> None:
            if isinstance(case.body, dict):
                case.body["wait"] = True  # keep the node from piling up unfinished jobs
                if case.body.get("where") == "network":
                    # generated peer addresses must never be dialled: network jobs go to this node only
                    case.body["peers"] = [api.node.address]
            response = case.call(base_url=api.url, timeout=60)
            case.validate_response(response)
            checked[operation.label] = checked.get(operation.label, 0) + 1

        conforms()
    assert set(checked) == {op.label for op in operations}
    assert api.call("GET", "/v1/node")[0] == 200
