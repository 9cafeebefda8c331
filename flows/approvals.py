"""An operator's approval as a step of a flow: ``decision = await request_approval(...)``.

The flow run pauses with a form (``ApprovalForm``: approve or reject, the operator's id, a
comment) whose description shows what is being approved; the Prefect UI shows it on the
paused run ("Resume"), and a program answers with
``resume_flow_run(flow_run_id, run_input={"decision": "approve", "operator": "...",
"comment": "..."})``. The answer is handed to the caller's ``record`` callback (e.g. written
with the remittance batch) before the flow goes on, left as a markdown artifact on the run, and
emitted as a ``vouchflow.approval.approved|rejected`` event.

``pause_flow_run`` gives up after one hour by default; approvals may wait overnight, so the
default timeout here is a week. ``suspend=True`` suspends instead (the process exits and the
run is rescheduled once answered; needs a deployment, and the flow must skip what it already
did when it starts again, as vouchflow's flows do through their run ledger).

The open-source server has no user accounts: the operator id in the form is what the operator
says it is. Where identity must be proven, the operator acts through vouchflow's own API with a
personal token, which resumes the run on their behalf.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from prefect.input import RunInput
from pydantic import Field

from canonical import now_utc
from flows.runtime import emit, in_flow_run, markdown_artifact, run_key, run_logger

DEFAULT_TIMEOUT_S = 7 * 24 * 3600


class ApprovalForm(RunInput):
    """What an operator answers when a run asks for approval."""

    decision: Literal["approve", "reject"] = Field(
        description="approve: the flow goes on; reject: it stops without doing it.")
    operator: str = Field(min_length=1, max_length=200,
                          description="Your operator id (recorded with the decision).")
    comment: str = Field(default="", max_length=2000,
                         description="Why (kept with the decision).")


@dataclass(frozen=True)
class Approval:
    """The recorded answer."""

    subject: str
    approved: bool
    operator: str
    comment: str
    decided_at: datetime
    flow_run_id: str | None

    @property
    def decision(self) -> str:
        return "approve" if self.approved else "reject"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["decision"] = self.decision
        data["decided_at"] = self.decided_at.isoformat()
        return data


class ApprovalRejected(RuntimeError):
    """Raised by ``require_approval`` when the operator said no."""

    def __init__(self, approval: Approval) -> None:
        super().__init__(f"{approval.subject}: rejected by {approval.operator}"
                         + (f" ({approval.comment})" if approval.comment else ""))
        self.approval = approval


Recorder = Callable[[Approval], Awaitable[None] | None]


def describe(subject: str, details: Mapping[str, Any] | str | None = None) -> str:
    """The form's description: what is being approved, as markdown."""
    lines = [f"## Approve: {subject}"]
    if isinstance(details, str):
        lines += ["", details]
    elif details:
        lines += ["", "| | |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in details.items()]
    lines += ["", "Answer **approve** or **reject**, with your operator id and a comment."]
    return "\n".join(lines)


async def request_approval(
    subject: str,
    details: Mapping[str, Any] | str | None = None,
    *,
    record: Recorder | None = None,
    key: str | None = None,
    timeout_s: int = DEFAULT_TIMEOUT_S,
    poll_interval_s: int = 10,
    suspend: bool = False,
) -> Approval:
    """Pause this flow run until an operator approves or rejects ``subject``; returns the
    answer after ``record`` (if given) has stored it. ``details`` (a mapping shown as a table,
    or markdown) is what the operator sees; keep codes and secrets out of it.

    ``key`` names this approval within the run (default: the order of pauses in the run);
    give one when a flow asks for several approvals and may be re-run."""
    if not in_flow_run():
        raise RuntimeError("request_approval needs a flow run (it pauses the run)")
    logger = run_logger()
    description = describe(subject, details)
    form = ApprovalForm.with_initial_data(description=description)
    await markdown_artifact("approval-request", description,
                            f"Waiting for approval: {subject}")
    run_id = run_key()  # the flow run's id: a flow run is required above
    logger.info("waiting for approval: %s", subject)
    if suspend:
        from prefect.flow_runs import suspend_flow_run

        answer = await suspend_flow_run(wait_for_input=form, timeout=timeout_s, key=key)
    else:
        from prefect.flow_runs import pause_flow_run

        answer = await pause_flow_run(wait_for_input=form, timeout=timeout_s,
                                      poll_interval=poll_interval_s, key=key)
    approval = Approval(subject=subject, approved=answer.decision == "approve",
                        operator=answer.operator.strip(), comment=answer.comment,
                        decided_at=now_utc(), flow_run_id=run_id)
    if record is not None:
        outcome = record(approval)
        if inspect.isawaitable(outcome):
            await outcome
    await markdown_artifact(
        "approval-decision",
        f"## {'Approved' if approval.approved else 'Rejected'}: {subject}\n\n"
        f"- by operator `{approval.operator}` at {approval.decided_at:%Y-%m-%d %H:%M:%S} UTC\n"
        f"- comment: {approval.comment or '(none)'}\n",
        f"Approval decision: {subject}")
    emit(f"vouchflow.approval.{'approved' if approval.approved else 'rejected'}",
         resource_id=f"vouchflow.approval.{subject}",
         payload={"subject": subject, "operator": approval.operator})
    logger.info("%s %s by %s", subject, "approved" if approval.approved else "rejected",
                approval.operator)
    return approval


async def require_approval(subject: str, details: Mapping[str, Any] | str | None = None,
                           **kwargs: Any) -> Approval:
    """``request_approval`` that raises ``ApprovalRejected`` on a rejection."""
    approval = await request_approval(subject, details, **kwargs)
    if not approval.approved:
        raise ApprovalRejected(approval)
    return approval
