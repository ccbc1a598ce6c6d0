"""Server logs that say what happened in one line when a client sent something wrong, and never carry a payload.

BentoML logs every request it refuses as an ERROR with a traceback; for a validation error that traceback
holds pydantic's ``input_value=...``, a fragment of the upload. A client's mistake is not the server's
error: this filter turns those records into one INFO line naming the fields, with no traceback. Only
errors of reading the request count as the client's: BentoML answers a validation error raised anywhere in
a handler with a 400 too, and one raised by the server's own code keeps its ERROR and traceback.
"""

from __future__ import annotations

import logging

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

from clipdlut.serving.bentoml_internals import REQUEST_LOGGER, REQUEST_PARSING


def _raised_reading_the_request(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == REQUEST_PARSING:
            return True
        tb = tb.tb_next
    return False


class ClientErrorsInOneLine(logging.Filter):
    """Rewrite BentoML's records of client errors (validation, 4xx) to one line at INFO, without traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError) and _raised_reading_the_request(error):
            fields = ", ".join(sorted({".".join(str(p) for p in e["loc"]) or "body" for e in error.errors()}))
            summary = f"{error.error_count()} validation error(s) in {fields}"
        elif isinstance(error, BentoMLException) and 400 <= int(error.error_code) < 500:
            summary = f"{type(error).__name__} {int(error.error_code)}"
        else:
            return True
        record.msg = f"{record.getMessage().replace('Exception on', 'client error on')}: {summary}"
        record.args, record.exc_info, record.exc_text = None, None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install() -> None:
    """Attach the filter to BentoML's request logger (idempotent)."""
    logger = logging.getLogger(REQUEST_LOGGER)
    if not any(isinstance(f, ClientErrorsInOneLine) for f in logger.filters):
        logger.addFilter(ClientErrorsInOneLine())
