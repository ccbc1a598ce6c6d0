"""The API's ASGI middleware, one module per concern, added in ``service.py`` (outermost first): every request
answered (:mod:`.answers`), bodies within their limits and readable (:mod:`.bodies`), the client's key (:mod:`.auth`),
the task gate (:mod:`.gate`), and the pages the service answers itself (:mod:`.pages`)."""

from clipdlut.serving.http.answers import Answered, ClearErrors
from clipdlut.serving.http.auth import Authenticate, client_of
from clipdlut.serving.http.bodies import BodyLimit, FormCheck, JsonBodies
from clipdlut.serving.http.gate import TaskGate
from clipdlut.serving.http.pages import Landing, ReadyReason

__all__ = ["Answered", "Authenticate", "BodyLimit", "ClearErrors", "FormCheck", "JsonBodies", "Landing", "ReadyReason",
           "TaskGate", "client_of"]
