"""Credentials the way NATS administrators make them, for the authentication tests: NKey users,
and an operator, an account and a user as JWTs (what ``nsc`` writes), with the user's ``.creds``
file. The JWTs are built and signed here with the nkeys library (ed25519), in the format
nats-server verifies."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path

import nkeys


def new_keypair(prefix: int) -> tuple[str, str]:
    """(seed, public key) of a new NKey; ``prefix`` is nkeys.PREFIX_BYTE_USER, ..._ACCOUNT, ..."""
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(bytearray(seed))
    return seed.decode(), pair.public_key.decode()


def nkey_user(folder: Path) -> tuple[Path, str]:
    """A user NKey: (path of its seed file, public key for the server's config)."""
    seed, public = new_keypair(nkeys.PREFIX_BYTE_USER)
    path = folder / "user.nk"
    path.write_text(seed + "\n")
    path.chmod(0o600)
    return path, public


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def make_jwt(claims: dict, signer_seed: str) -> str:
    claims = {**claims, "iat": int(time.time())}
    claims["jti"] = base64.b32encode(hashlib.sha256(
        json.dumps(claims, sort_keys=True).encode()).digest()).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = nkeys.from_seed(bytearray(signer_seed.encode())).sign(f"{header}.{body}".encode())
    return f"{header}.{body}.{_b64(signature)}"


CREDS = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------
"""


def operator_setup(folder: Path) -> tuple[str, Path, Path]:
    """Decentralized JWT authentication: (server config block, the user's .creds file, a .creds
    file of a user signed by another account's key, which the server refuses)."""
    folder.mkdir(parents=True, exist_ok=True)
    op_seed, op_pub = new_keypair(nkeys.PREFIX_BYTE_OPERATOR)
    acc_seed, acc_pub = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    operator = make_jwt({"iss": op_pub, "sub": op_pub, "name": "test-operator",
                         "nats": {"type": "operator", "version": 2}}, op_seed)
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                 "wildcards": True, "conn": -1, "leaf": -1, "mem_storage": -1,
                 "disk_storage": -1, "streams": -1, "consumer": -1}
    account = make_jwt({"iss": op_pub, "sub": acc_pub, "name": "fleet",
                        "nats": {"limits": unlimited, "type": "account", "version": 2}}, op_seed)
    sys_seed, sys_pub = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    system = make_jwt({"iss": op_pub, "sub": sys_pub, "name": "SYS",
                       "nats": {"limits": {"subs": -1, "conn": -1}, "type": "account",
                                "version": 2}}, op_seed)
    (folder / "operator.jwt").write_text(operator)
    block = (f'operator: "{folder / "operator.jwt"}"\nsystem_account: {sys_pub}\n'
             f'resolver: MEMORY\nresolver_preload: {{\n  {acc_pub}: "{account}"\n'
             f'  {sys_pub}: "{system}"\n}}\n')
    good = _user_creds(folder / "site.creds", acc_pub, acc_seed)
    rogue_seed, rogue_pub = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    bad = _user_creds(folder / "rogue.creds", rogue_pub, rogue_seed)
    return block, good, bad


def _user_creds(path: Path, account_pub: str, account_seed: str) -> Path:
    user_seed, user_pub = new_keypair(nkeys.PREFIX_BYTE_USER)
    user = make_jwt({"iss": account_pub, "sub": user_pub, "name": "site",
                     "nats": {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                              "type": "user", "version": 2}}, account_seed)
    path.write_text(CREDS.format(jwt=user, seed=user_seed))
    path.chmod(0o600)
    return path
