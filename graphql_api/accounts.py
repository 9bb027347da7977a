"""Accounts of the built-in sign-in: user names, argon2id password hashes and roles, in DynamoDB
(`data.UserModel`, shared by every API process and the `udagram user` commands).

The first account created is an admin (role `admin` in its tokens' role claim); later ones are
not, unless granted. Passwords are hashed with argon2-cffi's defaults (argon2id, RFC 9106's
low-memory profile); a hash made with older parameters is redone at the next sign-in.
"""

from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pynamodb.exceptions import DeleteError, DoesNotExist, PutError, UpdateError

from graphql_api.auth import validate_user_name
from udagram import data

ADMIN = "admin"
ROLES = (ADMIN,)
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024  # hashing a megabyte per attempt would be a cheap denial of service


class AccountError(ValueError):
    """A refused account operation; the message says why, for the person at the keyboard."""


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Checked for unknown names, so that they take as long as a wrong password.
    return _hasher().hash("not a password of anyone")


def check_password_policy(name: str, password: str) -> None:
    if not password:
        raise AccountError("the password is empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password is too short: use at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"the password is too long: at most {MAX_PASSWORD_LENGTH} characters")
    if len(set(password)) < 4:
        raise AccountError("the password is too weak: it repeats too few different characters")
    if name.lower() in password.lower():
        raise AccountError("the password is too weak: it contains the user name")


def _check_name(name: str) -> str:
    try:
        return validate_user_name(name)
    except ValueError as exc:
        raise AccountError(str(exc)) from exc


def _any_account() -> bool:
    return any(True for _ in data.UserModel.scan(limit=1, consistent_read=True, attributes_to_get=["name"]))


def add_user(name: str, password: str, *, admin: bool = False) -> data.UserModel:
    """Create an account; the first one is an admin. AccountError if the name is taken or invalid,
    or the password too weak."""
    _check_name(name)
    check_password_policy(name, password)
    roles = [ADMIN] if admin or not _any_account() else []
    user = data.UserModel(name=name, password_hash=_hasher().hash(password), roles=roles, created_at=data.utcnow())
    try:
        user.save(condition=data.UserModel.name.does_not_exist())
    except PutError as exc:
        if data.condition_failed(exc):
            raise AccountError(f"there is already an account named {name!r}") from exc
        raise
    return user


def get_user(name: str) -> data.UserModel | None:
    try:
        return data.UserModel.get(name, consistent_read=True)
    except DoesNotExist:
        return None


def list_users() -> list[data.UserModel]:
    return sorted(data.UserModel.scan(consistent_read=True), key=lambda user: user.name)


def remove_user(name: str) -> None:
    """Delete an account; its sign-ins end at their next token renewal (the provider looks the
    user up on each refresh)."""
    try:
        data.UserModel(name=name).delete(condition=data.UserModel.name.exists())
    except DeleteError as exc:
        if data.condition_failed(exc):
            raise AccountError(f"there is no account named {name!r}") from exc
        raise


def grant_role(name: str, role: str) -> data.UserModel:
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    user = get_user(name)
    if user is None:
        raise AccountError(f"there is no account named {name!r}")
    if role not in user.roles:
        try:
            user.update(actions=[data.UserModel.roles.set(sorted({*user.roles, role}))],
                        condition=data.UserModel.name.exists())
        except UpdateError as exc:
            raise AccountError(f"there is no account named {name!r}") from exc
    return user


def authenticate(name: str, password: str) -> data.UserModel | None:
    """The account if `password` is its password; None for a wrong password or an unknown name
    (both take one argon2 verification)."""
    user = None
    if isinstance(name, str) and 0 < len(name) <= 64:
        try:
            validate_user_name(name)
        except ValueError:
            pass
        else:
            user = get_user(name)
    if not isinstance(password, str) or not 0 < len(password) <= MAX_PASSWORD_LENGTH:
        return None
    try:
        _hasher().verify(user.password_hash if user else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if _hasher().check_needs_rehash(user.password_hash):
        try:
            user.update(actions=[data.UserModel.password_hash.set(_hasher().hash(password))],
                        condition=data.UserModel.name.exists())
        except UpdateError:
            pass  # removed meanwhile: the sign-in still fails at the token step
    return user
