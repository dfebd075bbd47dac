"""The MLflow tags that link a run to its Prefect flow run: a link only where there is a UI."""

import pytest
from prefect import flow
from prefect.settings import PREFECT_UI_URL, temporary_settings

from flows.stages import flow_run_tags

pytestmark = pytest.mark.integration


@flow(name="flow-run-tags")
def _tags_of_this_run() -> dict[str, str]:
    return flow_run_tags()


def test_under_the_ephemeral_api_a_run_is_tagged_with_its_flow_run_id_and_no_link():
    # when a flow runs on the ephemeral API, which serves no UI
    tags = _tags_of_this_run()
    # then it carries its id, and no "None/flow-runs/…" link
    assert len(tags["prefect.flow_run_id"]) == 36, f"the flow run's UUID: {tags}"
    assert "prefect.flow_run_url" not in tags, f"no link that leads nowhere: {tags}"


def test_with_a_ui_the_link_leads_to_the_flow_run():
    # when a UI is configured (as under a Prefect server)
    with temporary_settings({PREFECT_UI_URL: "http://127.0.0.1:4200"}):
        tags = _tags_of_this_run()
    # then the link is that UI's page of this flow run
    expected = f"http://127.0.0.1:4200/flow-runs/flow-run/{tags['prefect.flow_run_id']}"
    assert tags.get("prefect.flow_run_url") == expected, f"the UI link: {tags}"
