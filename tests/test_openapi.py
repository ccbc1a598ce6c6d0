"""Schema fuzzing: schemathesis generates requests from the service's own OpenAPI document and sends them
to a real ``bentoml serve`` (tiny model).

(Its pytest plugin does not run under pytest 9, so each operation's strategy is driven by Hypothesis here.)
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.live import serving

pytestmark = pytest.mark.e2e
EXAMPLES = 25


@pytest.fixture(scope="module")
def operations(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("fuzz"), CLIPDLUT_MAX_PIXELS="1000000", CLIPDLUT_MAX_BODY_MB="2") as s:
        schema = schemathesis.openapi.from_url(s.url + "/docs.json")
        yield {f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in schema.get_all_operations())}


def test_every_endpoint_is_fuzzed(operations):
    assert {"POST /retouch", "POST /query_task", "POST /stop_task", "POST /v1/retouch/submit", "POST /v1/progress",
            "POST /v1/cancel", "POST /v1/apply", "POST /v1/classify"} <= set(operations)


def test_no_server_errors_and_responses_match_the_schema(operations):
    for name, operation in sorted(operations.items()):
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

        try:
            fuzz()
        except Exception as e:
            raise AssertionError(f"{name}: {e}") from e
