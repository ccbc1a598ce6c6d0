"""The job statuses (clipdlut/status.py): one set, its ended ones, and the names each interface uses."""

import typing

import pytest

from clipdlut.serving.schemas import LegacyTask, ProgressResponse
from clipdlut.status import ORIGINAL_STATUSES, JobStatus

pytestmark = pytest.mark.unit


def test_ended_statuses_and_outward_names():
    assert [s for s in JobStatus if s.is_finished] == [JobStatus.FINISHED, JobStatus.CANCELLED, JobStatus.FAILED]
    assert [s.original for s in JobStatus] == ["pending", "processing", "finished", "stopped", "failed"]
    assert [s.task for s in JobStatus] == ["in_progress", "in_progress", "completed", "canceled", "failed"]
    assert JobStatus("finished") == "finished" and JobStatus.FINISHED.value == "finished"  # stored as the value


def test_the_response_models_take_their_statuses_from_the_enum():
    assert typing.get_args(LegacyTask.model_fields["status"].annotation) == ORIGINAL_STATUSES
    assert ProgressResponse.model_fields["status"].annotation is JobStatus
