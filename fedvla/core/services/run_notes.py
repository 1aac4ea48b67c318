"""Notes on a run: free text that operators and admins write about it (what was tried, why it
failed), searchable in the runs list. Whoever may read the run may read its notes."""

from sqlmodel import Session

from fedvla.core.errors import Forbidden, InvalidFields, reject_nul_characters
from fedvla.core.models import MAX_RUN_NOTES_LENGTH, ApiToken, Role, Run
from fedvla.core.services.runs import get_run

NOTE_WRITERS = frozenset({Role.admin, Role.operator})


def can_write_notes(token: ApiToken | None) -> bool:
    return token is not None and token.role in NOTE_WRITERS


def set_notes(session: Session, run_id: int, notes: str, token: ApiToken) -> Run:
    """Replaces the run's notes; Forbidden for viewers and for operators who cannot read it."""
    if not can_write_notes(token):
        raise Forbidden("Needs the admin or operator role")
    run = get_run(session, run_id, token)
    if len(notes) > MAX_RUN_NOTES_LENGTH:
        raise InvalidFields.one(
            "notes", f"is {len(notes)} characters; at most {MAX_RUN_NOTES_LENGTH}"
        )
    reject_nul_characters({"notes": notes})
    run.notes = notes.replace("\r\n", "\n")
    session.add(run)
    session.commit()
    session.refresh(run)
    return run
