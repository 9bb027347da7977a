"""Accounts of the built-in sign-in (DynamoDB on the moto server): first admin, password policy,
argon2id hashes, authenticate, remove, grant."""

from __future__ import annotations

import pytest

from graphql_api import accounts
from udagram import data

PASSWORD = "correct horse battery staple"


def test_the_first_account_is_admin_and_later_ones_are_not(aws_settings):
    assert accounts.add_user("alice", PASSWORD).roles == ["admin"]
    assert accounts.add_user("bob", PASSWORD).roles == []
    assert accounts.add_user("carol", PASSWORD, admin=True).roles == ["admin"]
    assert [(u.name, u.roles) for u in accounts.list_users()] == [
        ("alice", ["admin"]), ("bob", []), ("carol", ["admin"])]


def test_passwords_are_stored_as_argon2id_hashes(aws_settings):
    accounts.add_user("alice", PASSWORD)
    stored = data.UserModel.get("alice").password_hash
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert accounts.authenticate("alice", PASSWORD).name == "alice"
    assert accounts.authenticate("alice", PASSWORD + "!") is None
    assert accounts.authenticate("nobody", PASSWORD) is None
    assert accounts.authenticate("alice", "") is None
    assert accounts.authenticate("alice", "x" * 5000) is None
    assert accounts.authenticate("<b>", PASSWORD) is None


@pytest.mark.parametrize("password, reason", [
    ("", "empty"), ("short", "too short"), ("aaaaaaaaaaaa", "too weak"), ("alice-is-great", "user name"),
    ("x" * 2000, "too long"),
])
def test_weak_passwords_are_refused_with_the_reason(aws_settings, password, reason):
    with pytest.raises(accounts.AccountError, match=reason):
        accounts.add_user("alice", password)
    assert accounts.get_user("alice") is None


@pytest.mark.parametrize("name", ["", "a" * 33, "-alice", "al ice", "<script>"])
def test_bad_names_are_refused(aws_settings, name):
    with pytest.raises(accounts.AccountError, match="user name"):
        accounts.add_user(name, PASSWORD)


def test_a_taken_name_is_refused_and_the_account_kept(aws_settings):
    accounts.add_user("alice", PASSWORD)
    with pytest.raises(accounts.AccountError, match="already an account"):
        accounts.add_user("alice", "another password here")
    assert accounts.authenticate("alice", PASSWORD) is not None


def test_remove_and_grant(aws_settings):
    accounts.add_user("alice", PASSWORD)
    accounts.add_user("bob", PASSWORD)
    assert accounts.grant_role("bob", "admin").roles == ["admin"]
    assert accounts.get_user("bob").roles == ["admin"]
    with pytest.raises(accounts.AccountError, match="unknown role"):
        accounts.grant_role("bob", "root")
    accounts.remove_user("bob")
    assert accounts.get_user("bob") is None and accounts.authenticate("bob", PASSWORD) is None
    for operation in (lambda: accounts.remove_user("bob"), lambda: accounts.grant_role("bob", "admin")):
        with pytest.raises(accounts.AccountError, match="no account named 'bob'"):
            operation()
