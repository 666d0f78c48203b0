"""The one error of the endpoint validators: bad input, with the ``error_code`` the API answers.

A module of its own so that every validator (``config``, ``capture``, ``ratelimits``) can raise it
without importing another validator.
"""

from __future__ import annotations


class ConfigError(Exception):
    """Bad input: the ``error_code`` and message the API answers with."""

    def __init__(self, message: str, error_code: str = "INVALID_PARAMETER_VALUE") -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message
