import logging

import pytest
from bentoml.exceptions import BadInput, InternalServerError
from pydantic import BaseModel, ValidationError

from clipdlut.serving.bentoml_internals import REQUEST_LOGGER as BENTOML_REQUEST_LOGGER
from clipdlut.serving.logs import ClientErrorsInOneLine

pytestmark = pytest.mark.unit
UPLOAD = "iVBORw0KGgoAAAANSUhEUgAA" * 40  # the start of a base64 PNG, as a client would send it


class Body(BaseModel):
    image: int
    target_prompt: str


def record(error: BaseException) -> logging.LogRecord:
    try:
        raise error
    except BaseException:
        import sys

        return logging.LogRecord(BENTOML_REQUEST_LOGGER, logging.ERROR, __file__, 1, "Exception on %s [%s]",
                                 ("/retouch", "POST"), sys.exc_info())


def formatted(r: logging.LogRecord) -> str:
    return logging.Formatter("%(levelname)s %(message)s").format(r)


def from_http_request(body: dict) -> Body:
    """Named as BentoML's function that reads a request (the filter recognises client errors by it)."""
    return Body.model_validate(body)


def test_a_validation_error_is_one_info_line_that_names_fields_and_holds_no_payload():
    try:
        from_http_request({"image": UPLOAD})
    except ValidationError as e:
        r = record(e)
    assert ClientErrorsInOneLine().filter(r)
    text = formatted(r)
    assert text == "INFO client error on /retouch [POST]: 2 validation error(s) in image, target_prompt"
    assert "iVBOR" not in text and "Traceback" not in text


def test_client_errors_are_one_line_and_server_errors_keep_their_traceback():
    r = record(BadInput("the image is not valid base64"))
    ClientErrorsInOneLine().filter(r)
    assert formatted(r) == "INFO client error on /retouch [POST]: BadInput 400"
    r = record(InternalServerError("bug"))
    ClientErrorsInOneLine().filter(r)
    assert r.levelno == logging.ERROR and "Traceback" in formatted(r)


def test_a_validation_error_of_the_servers_own_code_keeps_its_traceback():
    """BentoML answers 400 to a ValidationError raised anywhere in a handler; a bug must still show as one."""
    try:
        Body.model_validate({"image": "x"})  # (not while reading a request: the server's own model)
    except ValidationError as e:
        r = record(e)
    ClientErrorsInOneLine().filter(r)
    assert r.levelno == logging.ERROR and "Traceback" in formatted(r)
