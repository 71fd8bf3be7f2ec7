"""Authentication: API keys, stored hashed, that name the caller's tenant and scopes.

Used by the HTTP layer (api/deps.py makes the request's Principal from its key), app.py and
the `glassbox keys` command; it uses only store/, errors.py and principal.py.
"""

from glassbox.auth.keys import ApiKey, CreatedKey, KeyService, load_secret

__all__ = ["ApiKey", "CreatedKey", "KeyService", "load_secret"]
