"""What the ledger raises: a message for the user, in words."""


class LedgerError(Exception):
    pass


class IllegalTransition(LedgerError):
    """A step the entity's state machine (``states``) does not allow; nothing was changed."""
